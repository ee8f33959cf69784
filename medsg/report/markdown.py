"""report.md: protocol, recipe, fold and class tables, figures linked from figures/."""

from __future__ import annotations

from typing import Any

from medsg.report.decision import headline_warning
from medsg.report.tables import (
    SYNTHETIC_TEXT,
    calibration_table,
    calibration_text,
    class_table,
    decision_table,
    decision_text,
    fold_table,
    md_escape,
    operating_point_tables,
    recipe_table,
    results_intro,
    sensitivity_intro,
    subgroup_table,
    to_markdown,
)


def render_markdown(
    summary: dict[str, Any], figures: list[tuple[str, str]], explanations: dict[str, Any] | None = None
) -> str:
    """``figures`` is a list of (caption, path relative to report.md); ``explanations`` holds the Explanations
    section (``table``, ``text``, ``panels`` as (caption, path)). Text goes through ``md_escape``."""
    esc = md_escape
    lines = [f"# Cross-validation report: {esc(summary['experiment'])}", ""]
    if summary.get("synthetic_data"):
        lines += [f"> **{esc(SYNTHETIC_TEXT)}**", ""]
    warning = headline_warning(summary)
    if warning:
        lines += [f"> **{esc(warning)}**", ""]
    lines += ["## Protocol", ""]
    lines += [f"- **{esc(key)}**: {esc(value)}" for key, value in summary["protocol"].items()]
    recipe = recipe_table(summary)
    if recipe is not None:
        lines += ["", "## Training recipe", "", to_markdown(recipe)]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {esc(note)}" for note in summary["notes"]]
    lines += [
        "",
        "## Results per fold",
        "",
        esc(results_intro(summary)),
        "",
        to_markdown(fold_table(summary)),
        "",
        "## Per class (pooled out-of-fold)",
        "",
        esc(sensitivity_intro(summary)),
        "",
        to_markdown(class_table(summary)),
        "",
    ]
    decision = decision_table(summary)
    if decision is not None:
        lines += ["## Decision rule (pooled out-of-fold)", "", esc(decision_text(summary)), ""]
        lines += [to_markdown(decision), ""]
    if "operating_points" in summary:
        lines += [
            "## Operating points of the critical class",
            "",
            esc(summary["operating_points"]["text"]),
            "",
        ]
        for caption, table in operating_point_tables(summary):
            lines += [esc(caption), "", to_markdown(table), ""]
    if "subgroups" in summary:
        lines += ["## Subgroups (pooled out-of-fold)", "", esc(summary["subgroups"]["text"]), ""]
        subgroups = subgroup_table(summary)
        if subgroups is not None:
            lines += [to_markdown(subgroups), ""]
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
    lines += [f"- {esc(key)}: {esc(text)}" for key, text in summary["definitions"].items()]
    lines += [""]
    return "\n".join(lines)
