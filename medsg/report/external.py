"""The external-test report (``medsg evaluate``): the cross-validation report's metrics, CIs and figures for a
labelled test set, with the cross-validated figures beside the test figures."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.core.io import atomic_write_bytes, atomic_write_text
from medsg.metrics import CALIBRATION_KEYS, HEADLINE, classification_metrics
from medsg.report.figures import confusion_png, reliability_png, roc_png
from medsg.report.html import html_page
from medsg.report.tables import COLUMN_TITLES, class_table, fmt, md_escape, to_html, to_markdown

CV_LABEL = "Cross-validation: pooled out-of-fold, single-fold models"
TEST_LABEL = "External test: the ensemble"


def _figure_set(y: np.ndarray, probs: np.ndarray, names: list[str], where: str) -> list[tuple[str, bytes]]:
    """Confusion matrix, ROC and reliability of one set of predictions, titled with ``where``."""
    metrics = classification_metrics(y, probs, names)
    aurocs = [metrics["per_class"][c]["auroc"] for c in names]
    return [
        ("confusion", confusion_png(metrics["confusion_matrix"], names, title=f"Confusion matrix, {where}")),
        ("roc", roc_png(y, probs, names, aurocs, title=f"ROC, one-vs-rest, {where}")),
        ("reliability", reliability_png(y, probs, title=f"Reliability, {where}")),
    ]


def _ci_cell(ci: dict[str, Any]) -> str:
    return f"{fmt(ci['point'])} [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def metrics_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Headline metrics with 95% CIs: the external test, then the cross-validation for comparison."""
    test = summary["bootstrap_ci"]
    rows = [
        {"": TEST_LABEL, "n": str(summary["n_scored"])}
        | {COLUMN_TITLES[k]: _ci_cell(test[k]) for k in HEADLINE}
    ]
    cv = summary.get("cv", {}).get("bootstrap_ci")
    if cv:
        n_cv = str(summary["cv"].get("n_pooled", ""))
        rule = (summary["cv"].get("decision") or {}).get("headline")
        rows.append(
            {"": CV_LABEL + (f" ({rule} rule, as its report's headline)" if rule else ""), "n": n_cv}
            | {COLUMN_TITLES[k]: _ci_cell(cv[k]) for k in HEADLINE}
        )
    return pd.DataFrame(rows)


def calibration_table(calibration: dict[str, Any]) -> pd.DataFrame:
    """ECE, Brier and log loss of the ensemble before and after temperature scaling, with CIs (paired)."""
    return pd.DataFrame(
        [
            {
                "Metric": COLUMN_TITLES[k],
                "Uncalibrated [95% CI]": _ci_cell(calibration["before"][k]),
                "Calibrated [95% CI]": _ci_cell(calibration["after"][k]),
            }
            for k in CALIBRATION_KEYS
        ]
    )


def _facts(summary: dict[str, Any]) -> list[str]:
    """The protocol and data-hygiene sentences of the report."""
    test, overlap = summary["test_set"], summary["overlap"]
    members = summary["predict"]["members"]
    facts = [
        f"Model: {summary['model']} ({summary['model_kind']}), {len(members)} model(s): "
        + ", ".join(f"{m['name']} (T = {m['temperature']:.3f})" for m in members),
        f"Test set: adapter {test['adapter']} at {test['root']}"
        + (f", options {test['options']}" if test["options"] else ""),
        f"Images: {summary['n_listed']} listed, {summary['n_scored']} scored, {summary['n_skipped']} unreadable "
        "and skipped",
        f"Probabilities: {summary['calibrated']}; TTA: {summary['predict']['tta']}",
        *(
            [
                f"Classes with no test image: {', '.join(summary['absent_classes'])}. Their sensitivity and "
                "AUROC are undefined, and balanced accuracy, macro F1 and macro AUROC average over the other "
                "classes, so they do not compare directly with the cross-validation row, which covers all"
            ]
            if summary.get("absent_classes")
            else []
        ),
        f"Overlap with the training images (the audit's rules: identical bytes or pixels, or dHash-256 <= "
        f"{overlap['rules']['near_dup_threshold']} bits and thumbnail correlation >= "
        f"{overlap['rules']['min_correlation']}): {overlap['n']} test image(s) {overlap['by_kind'] or ''}; "
        + (
            "excluded from scoring (--exclude-overlap)"
            if overlap["excluded"]
            else "kept in the scores"
            + (" - they inflate them; use --exclude-overlap" if overlap["n"] else "")
        ),
        f"Flagged as unlike the training data (fold disagreement or image statistics): {summary['n_flagged']}",
        f"95% CIs: percentile bootstrap, {summary['bootstrap']['n_resamples']} resamples of the test set's "
        f"groups, seed {summary['bootstrap']['seed']}",
        "The cross-validation row and figures describe single-fold models on their own held-out folds; the "
        "external test describes the shipped ensemble on new data.",
    ]
    return facts


def _markdown(summary: dict[str, Any], pairs: list[tuple[str | None, str]], classes: pd.DataFrame) -> str:
    esc = md_escape
    lines = [f"# {esc(summary['title'])}", "", "## Protocol", ""]
    lines += [f"- {esc(f)}" for f in _facts(summary)]
    lines += ["", "## Results", "", to_markdown(metrics_table(summary)), ""]
    lines += ["## Calibration", "", to_markdown(calibration_table(summary["calibration"])), ""]
    lines += ["## Per class (external test)", "", to_markdown(classes), "", "## Figures", ""]
    lines += [f"| {CV_LABEL} | {TEST_LABEL} |", "|---|---|"]
    for cv_path, test_path in pairs:
        left = f"![cross-validation]({cv_path})" if cv_path else "–"
        lines.append(f"| {left} | ![external test]({test_path}) |")
    return "\n".join(lines) + "\n"


def _img(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def _html(summary: dict[str, Any], pairs: list[tuple[bytes | None, bytes]], classes: pd.DataFrame) -> str:
    esc = html.escape
    facts = "".join(f"<li>{esc(f)}</li>" for f in _facts(summary))
    rows = "".join(
        f"<tr><td>{_img(cv, 'cross-validation') if cv else '–'}</td><td>{_img(test, 'external test')}</td></tr>"
        for cv, test in pairs
    )
    return html_page(
        summary["title"],
        f"<h2>Protocol</h2><ul>{facts}</ul>"
        f"<h2>Results</h2>{to_html(metrics_table(summary))}"
        f"<h2>Calibration</h2>{to_html(calibration_table(summary['calibration']))}"
        f"<h2>Per class (external test)</h2>{to_html(classes)}"
        f"<h2>Figures</h2><table><thead><tr><th>{esc(CV_LABEL)}</th><th>{esc(TEST_LABEL)}</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>",
        css=" td img { width: 100%; }",
    )


def write_external_report(
    summary: dict[str, Any],
    test: tuple[np.ndarray, np.ndarray],
    cv: tuple[pd.DataFrame, bool] | None,
    names: list[str],
    out_dir: Path,
) -> Path:
    """report.md, report.html and figures/ (test_*.png, cv_*.png) in ``out_dir``; returns report.html."""
    out_dir = Path(out_dir)
    test_figs = _figure_set(*test, names, "external test (ensemble)")
    cv_figs: list[tuple[str, bytes]] = []
    if cv is not None:
        frame, calibrated = cv
        where = "CV pooled out-of-fold" + (", calibrated" if calibrated else "")
        probs = frame[[f"p_{n}" for n in names]].to_numpy(dtype=np.float64)
        cv_figs = _figure_set(frame["y_true"].to_numpy(), probs, names, where)
    md_pairs, html_pairs = [], []
    for k, (name, png) in enumerate(test_figs):
        atomic_write_bytes(out_dir / "figures" / f"test_{name}.png", png)
        cv_png = cv_figs[k][1] if cv_figs else None
        if cv_png is not None:
            atomic_write_bytes(out_dir / "figures" / f"cv_{name}.png", cv_png)
        md_pairs.append((f"figures/cv_{name}.png" if cv_png else None, f"figures/test_{name}.png"))
        html_pairs.append((cv_png, png))
    classes = class_table({"pooled": summary["metrics"], "class_names": names})
    atomic_write_text(out_dir / "report.md", _markdown(summary, md_pairs, classes))
    return atomic_write_text(out_dir / "report.html", _html(summary, html_pairs, classes))
