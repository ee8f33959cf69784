"""Cross-validation report: pool the finished folds of a run, write summary.json and a Markdown/HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medsg.calibration import CALIBRATION_FILE, VAL_PREDICTIONS
from medsg.config import DEFAULT_BOOTSTRAP
from medsg.core.io import atomic_write_bytes, atomic_write_text
from medsg.report.aggregate import build_summary, group_labels, load_run
from medsg.report.explanations import (
    copy_explanations,
    explanation_text,
    load_explanations,
    localization_table,
)
from medsg.report.figures import confusion_png, reliability_png, roc_png, training_curves_png
from medsg.report.html import render_html
from medsg.report.markdown import render_markdown
from medsg.report.run_data import RunData

__all__ = ["build_summary", "load_run", "write_report", "write_run_data_report"]


def write_report(
    run_dir: Path, report_dir: Path, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> Path:
    """Aggregate the folds with a DONE marker; returns the path of report.html.

    Writes summary.json and oof_predictions.csv into ``run_dir`` and ``report_dir``, and report.md,
    report.html, figures/*.png, the folds' calibration.json records and their pooled inner validation
    predictions (val_predictions.csv) into ``report_dir``, all atomically.
    """
    run_dir = Path(run_dir)
    return write_run_data_report(load_run(run_dir), report_dir, n_bootstrap, seed, run_dir=run_dir)


def write_run_data_report(
    run: RunData,
    report_dir: Path,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    run_dir: Path | None = None,
) -> Path:
    """``write_report`` for a run already in memory (a seed ensemble has no run folder: ``run_dir`` None);
    a run folder also gets summary.json and oof_predictions.csv, and gives its explanations."""
    report_dir = Path(report_dir)
    summary = build_summary(run, n_bootstrap=n_bootstrap, seed=seed)
    oof = run.oof.copy()
    groups, _ = group_labels(run)
    if groups is not None:  # the bootstrap's unit, so every CI can be recomputed from the report folder
        oof["group"] = groups
    # in the run folder and beside the report, so a committed report can be recomputed without the run
    # (the predictions first: a summary.json never describes predictions that are not written yet)
    for folder in (report_dir,) if run_dir is None else (run_dir, report_dir):
        atomic_write_text(folder / "oof_predictions.csv", oof.to_csv(index=False))
        atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    # what the temperatures, prior shifts and operating-point thresholds were fitted on, and their values
    if run.val:
        val = pd.concat([run.val[f] for f in sorted(run.val)], ignore_index=True)
        atomic_write_text(report_dir / VAL_PREDICTIONS, val.to_csv(index=False))
    if run.calibration:
        records = {str(f): rec for f, rec in sorted(run.calibration.items())}
        atomic_write_text(report_dir / CALIBRATION_FILE, json.dumps(records, indent=2) + "\n")

    figures = _figures(run, summary)
    for _, name, png in figures:
        atomic_write_bytes(report_dir / "figures" / name, png)
    explained = None if run_dir is None else _explanations(run_dir, report_dir)
    atomic_write_text(
        report_dir / "report.md",
        render_markdown(summary, [(cap, f"figures/{name}") for cap, name, _ in figures], explained),
    )
    html_explained = None
    if explained is not None:
        html_explained = {
            **explained,
            "panels": [(cap, (report_dir / rel).read_bytes()) for cap, rel in explained["panels"]],
        }
    return atomic_write_text(
        report_dir / "report.html",
        render_html(summary, [(cap, png) for cap, _, png in figures], html_explained),
    )


def _explanations(run_dir: Path, report_dir: Path) -> dict | None:
    """The Explanations section's content (table, text, panels copied into the report), or None."""
    record = load_explanations(run_dir)
    if record is None:
        return None
    return {
        "table": localization_table(record),
        "text": explanation_text(record),
        "panels": copy_explanations(record, report_dir),
    }


def _figures(run: RunData, summary: dict) -> list[tuple[str, str, bytes]]:
    """(caption, file name, PNG bytes) for every figure of the report."""
    y, p = run.oof["y_true"].to_numpy(), run.probs()
    pooled = summary["pooled"]
    aurocs = [pooled["per_class"][c]["auroc"] for c in run.class_names]
    figures = [
        (
            "Confusion matrix, normalised by true class (pooled OOF)",
            "confusion_matrix.png",
            confusion_png(pooled["confusion_matrix"], run.class_names),
        ),
        ("ROC curves, one-vs-rest (pooled OOF)", "roc_curves.png", roc_png(y, p, run.class_names, aurocs)),
        ("Reliability diagram (pooled OOF)", "reliability.png", reliability_png(y, p)),
    ]
    if run.calibrated is not None:
        calibrated = run.probs(run.calibrated)
        figures.append(
            (
                "Reliability diagram after temperature scaling (pooled OOF)",
                "reliability_calibrated.png",
                reliability_png(y, calibrated, title="Reliability, calibrated"),
            )
        )
    if run.histories:
        figures.append(
            (
                "Training curves per fold (star: the epoch selection kept)",
                "training_curves.png",
                training_curves_png(run.histories, _selected_epochs(run)),
            )
        )
    return figures


def _selected_epochs(run: RunData) -> dict[int, int]:
    """fold -> the epoch whose weights were tested (metrics.json's best_epoch), where recorded."""
    return {
        fold: int(meta["best_epoch"])
        for fold, meta in run.fold_meta.items()
        if isinstance(meta.get("best_epoch"), int)
    }
