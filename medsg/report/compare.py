"""``medsg compare``: paired differences between runs on the same split file, on the images all runs predicted.

Each run's out-of-fold predictions come from its run folder or from its committed report folder
(oof_predictions.csv with each image's group, calibration.json), so a fresh clone can compare committed
reports. Each run is scored under its own headline decision rule (``eval.decision``), or all under one
``decision`` (a question about the models rather than their packages). The first run is the
reference: every other run is compared with it, on one shared set of bootstrap resamples of the split's
groups, so the CI of a difference keeps the pairing. McNemar's exact test adds a test on per-image
correctness. Runs whose images were tested in different folds are refused: their folds test different models
on each image.
"""

from __future__ import annotations

import base64
import html
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medsg.config import DEFAULT_BOOTSTRAP
from medsg.core.errors import DataError, ReportRefused
from medsg.core.io import atomic_write_bytes, atomic_write_text
from medsg.metrics import PAIRED_KEYS, mcnemar_exact, paired_differences
from medsg.report.aggregate import group_labels, headline_probs, load_run_or_report
from medsg.report.figures import plain, to_png
from medsg.report.html import html_page
from medsg.report.run_data import RunData
from medsg.report.run_files import UNKNOWN, read_json_or_none
from medsg.report.tables import COLUMN_TITLES, fmt, md_escape, to_html, to_markdown

LOWER_IS_BETTER = {"log_loss"}


def test_folds(run: RunData) -> dict[str, int]:
    """Each image's outer test fold: from the run's own splits.json (the file its folds came from), or, for a
    report folder, from its out-of-fold predictions; a run folder without splits.json is refused."""
    if not any(run.run_dir.glob("fold_*")):  # a report folder: the OOF rows name each image's test fold
        return dict(zip(run.oof["id"].astype(str), run.oof["fold"].astype(int), strict=True))
    record = read_json_or_none(run.run_dir / "splits.json")
    folds = record.get("folds") if record else None
    if not isinstance(folds, list):
        raise DataError(
            f"{run.run_dir / 'splits.json'} is missing or unreadable: without it the runs cannot be shown to "
            "share their folds; compare run folders made by `medsg run`, or their report folders"
        )
    return {str(i): k for k, fold in enumerate(folds) for i in fold.get("val", [])}


def run_name(run: RunData) -> str:
    return run.config.experiment.name if run.config else run.run_dir.name


def _check_comparable(runs: list[RunData]) -> None:
    """Same classes and the same split file; otherwise a paired comparison means nothing."""
    first = runs[0]
    folds = test_folds(first)
    for run in runs[1:]:
        if run.class_names != first.class_names:
            raise DataError(
                f"{run.run_dir} has classes {run.class_names}, {first.run_dir} has {first.class_names}; "
                "compare runs of one dataset"
            )
        other = test_folds(run)
        if any(folds[i] != other[i] for i in set(folds) & set(other)):
            raise DataError(
                f"{run.run_dir / 'splits.json'} and {first.run_dir / 'splits.json'} hold different folds: each "
                "image was tested by different models, so a paired comparison is refused; run both "
                "experiments on the same splits.file"
            )


def compare_runs(
    run_dirs: list[Path], n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0, decision: str | None = None
) -> dict[str, Any]:
    """Paired differences of every run against the first, on the ids all runs predicted; ``decision``: one
    rule for every run instead of each run's headline rule."""
    if len(run_dirs) < 2:
        raise DataError("compare needs at least two run folders")
    runs = [load_run_or_report(Path(d)) for d in run_dirs]
    _check_comparable(runs)
    common = set.intersection(*(set(r.oof["id"]) for r in runs))
    ids = [i for i in runs[0].oof["id"] if i in common]
    if not ids:
        raise DataError("the runs share no predicted image; finish the same folds in each run first")
    frames = [r.oof.set_index("id").loc[ids] for r in runs]
    y = frames[0]["y_true"].to_numpy()
    for run, frame in zip(runs[1:], frames[1:], strict=True):
        if not np.array_equal(frame["y_true"].to_numpy(), y):
            raise DataError(f"{run.run_dir} labels some images differently from {runs[0].run_dir}")
    groups, unit = group_labels(runs[0])
    if groups is not None:
        groups = pd.Series(groups, index=runs[0].oof["id"]).loc[ids].to_numpy()
    headline = [headline_probs(r, decision) for r in runs]
    probs = [
        pd.DataFrame(p, index=r.oof["id"]).loc[ids].to_numpy()
        for r, (p, _) in zip(runs, headline, strict=True)
    ]
    correct = [p.argmax(axis=1) == y for p in probs]
    names = [run_name(r) for r in runs]
    comparisons = [
        {
            "a": names[0],
            "b": names[i],
            "metrics": paired_differences(
                y, probs[0], probs[i], runs[0].class_names, n_bootstrap, seed, groups=groups
            ),
            "mcnemar": mcnemar_exact(correct[0], correct[i]),
        }
        for i in range(1, len(runs))
    ]
    return {
        "runs": [
            {
                "name": name,
                "model": r.config.model.name if r.config else UNKNOWN,
                "folds": r.folds,
                "n_predicted": int(len(r.oof)),
                "decision": rule,
            }
            for name, r, (_, rule) in zip(names, runs, headline, strict=True)
        ],
        "class_names": runs[0].class_names,
        "n_common": len(ids),
        "comparisons": comparisons,
        "definitions": {
            "difference": "second run minus first run (the reference) on the images both predicted",
            "ci": f"paired percentile {n_bootstrap}-resample bootstrap, seed {seed}, resampling {unit}; both "
            "runs are scored on every resample",
            "mcnemar": "McNemar's exact test (two-sided binomial test on the images exactly one run "
            "classified correctly). It counts images as independent; images of one duplicate cluster or lesion "
            "are not, so its p-value is optimistic where groups hold several images: read it beside the "
            "group-resampled CI",
            "decision": (
                f"every run is scored under the {decision} rule (--decision), named beside it"
                if decision
                else "each run is scored under its own headline rule (eval.decision: balanced, prior or "
                "majority_floor), named beside it"
            ),
            "log loss": "lower is better, so a negative difference favours the second run",
        },
    }


def difference_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for comp in summary["comparisons"]:
        for key in PAIRED_KEYS:
            m = comp["metrics"][key]
            rows.append(
                {
                    "Comparison": f"{comp['b']} vs {comp['a']}",
                    "Metric": COLUMN_TITLES[key],
                    comp_label("a"): fmt(m["a"]),
                    comp_label("b"): fmt(m["b"]),
                    "Difference [95% CI]": f"{fmt(m['difference'])} [{fmt(m['low'])}, {fmt(m['high'])}]",
                }
            )
    return pd.DataFrame(rows)


def comp_label(which: str) -> str:
    return "Reference run" if which == "a" else "Compared run"


def verdict(comp: dict[str, Any]) -> str:
    """Which run wins in balanced accuracy, by how much, and whether the CI and McNemar's test support it."""
    m, test = comp["metrics"]["balanced_accuracy"], comp["mcnemar"]
    diff = m["difference"]
    better = comp["b"] if diff > 0 else comp["a"]
    clear = m["low"] is not None and (m["low"] > 0 or m["high"] < 0)
    return (
        f"{comp['b']} vs {comp['a']}: balanced accuracy differs by {diff:+.3f} "
        f"(95% CI {m['low']:+.3f} to {m['high']:+.3f}); "
        + (f"{better} is better" if clear else "the CI includes no difference")
        + f". McNemar: {test['only_a_correct']} images only {comp['a']} classified correctly, "
        f"{test['only_b_correct']} only {comp['b']}, p = {test['p_value']:.3g}."
    )


def difference_figure(summary: dict[str, Any]) -> Figure:
    """One row per metric: each comparison's difference with its CI, and a line at no difference. Rows (not
    columns) leave the comparison names room on the left, wrapped, and each title its own line."""
    comps = summary["comparisons"]
    labels = [textwrap.fill(plain(f"{c['b']} vs {c['a']}"), 28) for c in comps]
    height = len(PAIRED_KEYS) * (0.9 + 0.45 * len(comps))
    fig = Figure(figsize=(8, height), layout="constrained")
    axes = fig.subplots(len(PAIRED_KEYS), 1)
    for ax, key in zip(axes, PAIRED_KEYS, strict=True):
        for row, comp in enumerate(comps):
            m = comp["metrics"][key]
            if m["difference"] is None:
                continue
            err = [[m["difference"] - m["low"]], [m["high"] - m["difference"]]]
            ax.errorbar([m["difference"]], [row], xerr=err, fmt="o", color="tab:blue", capsize=4)
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        title = COLUMN_TITLES[key] + (" (lower is better)" if key in LOWER_IS_BETTER else "")
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_yticks(range(len(comps)), labels, fontsize=8)
        ax.set_ylim(-0.7, len(comps) - 0.3)
    axes[-1].set_xlabel("difference (compared run - reference run), with paired 95% CI")
    return fig


def check_target(out: Path, force: bool = False) -> None:
    """Refuse to write over a folder that holds another kind of report (a run's), unless ``force``."""
    if force or not (out / "report.md").exists() or (out / "comparison.json").exists():
        return
    raise ReportRefused(
        f"not writing the comparison into {out}: it holds another report (report.md without "
        "comparison.json). Pass --out to write it elsewhere, or --force to replace it."
    )


def write_comparison(
    run_dirs: list[Path],
    out: Path,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    force: bool = False,
    decision: str | None = None,
) -> Path:
    """comparison.json, report.md, report.html and figures/differences.png in ``out``; returns report.html."""
    out = Path(out)
    check_target(out, force)
    summary = compare_runs(run_dirs, n_bootstrap, seed, decision)
    atomic_write_text(out / "comparison.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    png = to_png(difference_figure(summary))
    atomic_write_bytes(out / "figures" / "differences.png", png)
    table = difference_table(summary)
    runs = [
        f"{r['name']} ({r['model']}, {r['decision']} rule, folds {', '.join(map(str, r['folds']))})"
        for r in summary["runs"]
    ]
    intro = (
        f"Runs: {'; '.join(runs)}. The first is the reference. {summary['n_common']} images were predicted "
        "by every run (out of fold, on the same split file)."
    )
    verdicts = [verdict(c) for c in summary["comparisons"]]
    definitions = summary["definitions"]
    md = ["# Paired comparison of runs", "", md_escape(intro), ""]
    md += [f"- {md_escape(v)}" for v in verdicts] + ["", to_markdown(table), ""]
    md += ["![Differences with paired 95% CIs](figures/differences.png)", "", "## Definitions", ""]
    md += [f"- {md_escape(k)}: {md_escape(v)}" for k, v in definitions.items()] + [""]
    atomic_write_text(out / "report.md", "\n".join(md))
    esc = html.escape
    page = html_page(
        "Paired comparison of runs",
        f"<p>{esc(intro)}</p><ul>"
        + "".join(f"<li>{esc(v)}</li>" for v in verdicts)
        + f'</ul>{to_html(table)}<figure><img alt="differences" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"><figcaption>Differences with '
        "paired 95% CIs</figcaption></figure><h2>Definitions</h2><ul>"
        + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in definitions.items())
        + "</ul>",
    )
    return atomic_write_text(out / "report.html", page)
