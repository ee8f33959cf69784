"""report.md: protocol, fold and class tables, figures linked from figures/."""

from __future__ import annotations

import html
from typing import Any

from medsg.report.tables import calibration_table, calibration_text, class_table, fold_table, to_markdown


def render_markdown(
    summary: dict[str, Any], figures: list[tuple[str, str]], explanations: dict[str, Any] | None = None
) -> str:
    """``figures`` is a list of (caption, path relative to report.md); ``explanations`` holds the Explanations
    section (``table``, ``text``, ``panels`` as (caption, path)). Text from the data is HTML-escaped."""
    esc = html.escape
    lines = [f"# Cross-validation report: {esc(str(summary['experiment']))}", "", "## Protocol", ""]
    lines += [f"- **{esc(key)}**: {esc(value)}" for key, value in summary["protocol"].items()]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {esc(note)}" for note in summary["notes"]]
    lines += [
        "",
        "## Results per fold",
        "",
        "Per-fold rows are the outer test folds. Mean ± SD is over folds (SD with ddof=1). The last row is "
        "the pooled out-of-fold value with a percentile bootstrap 95% CI "
        f"({esc(str(summary['definitions']['bootstrap_ci']))}).",
        "",
        to_markdown(fold_table(summary)),
        "",
        "## Per class (pooled out-of-fold)",
        "",
        to_markdown(class_table(summary)),
        "",
    ]
    calibration = calibration_table(summary)
    if calibration is not None:
        lines += ["## Calibration (pooled out-of-fold)", "", esc(calibration_text(summary)), ""]
        lines += [to_markdown(calibration), ""]
    lines += ["## Figures", ""]
    for caption, path in figures:
        lines += [f"### {esc(caption)}", "", f"![{esc(caption)}]({path})", ""]
    if explanations is not None:
        lines += ["## Explanations", ""]
        lines += [f"{esc(p)}\n" for p in explanations["text"]]
        if explanations["table"] is not None:
            lines += [to_markdown(explanations["table"]), ""]
        for caption, path in explanations["panels"]:
            lines += [f"![{esc(caption)}]({path})", ""]
    lines += ["## Definitions", ""]
    lines += [f"- {esc(key)}: {esc(str(text))}" for key, text in summary["definitions"].items()]
    lines += [
        "- macro AUROC: mean of one-vs-rest AUROCs over the classes present; absent classes are null.",
        "",
    ]
    return "\n".join(lines)
