"""report.html: one self-contained page (inline CSS, figures as base64 PNG); all data text is escaped."""

from __future__ import annotations

import base64
import html
from typing import Any

from medsg.report.decision import headline_warning
from medsg.report.tables import (
    SYNTHETIC_TEXT,
    calibration_table,
    calibration_text,
    class_table,
    decision_table,
    decision_text,
    fold_summary_rows,
    fold_table,
    operating_point_tables,
    recipe_table,
    results_intro,
    sensitivity_intro,
    subgroup_table,
    to_html,
)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.summary { background: #f3f6fa; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dt { font-weight: 600; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #8a4b00; }
.synthetic, .warning { border: 2px solid #b00; padding: 0.5em 1em; color: #b00; font-weight: 600; }
"""


def html_page(title: str, body: str, css: str = "") -> str:
    """A self-contained page: the escaped title as <title> and <h1>, the report style (plus ``css``), then
    ``body`` (already HTML). The one page frame of the run report, the comparison and the external report."""
    title = html.escape(title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{CSS}{css}</style></head><body><h1>{title}</h1>{body}</body></html>\n"
    )


def render_html(
    summary: dict[str, Any], figures: list[tuple[str, bytes]], explanations: dict[str, Any] | None = None
) -> str:
    """``figures`` is a list of (caption, PNG bytes); they are inlined as data: URIs. ``explanations`` holds the
    Explanations section (``table``, ``text``, ``panels`` as (caption, PNG bytes))."""
    esc = html.escape
    title = f"Cross-validation report: {summary['experiment']}"
    protocol = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in summary["protocol"].items())
    notes = "".join(f'<li class="note">{esc(n)}</li>' for n in summary["notes"])
    images = _figures_html(figures)
    explained = ""
    if explanations is not None:
        explained = "<h2>Explanations</h2>" + "".join(f"<p>{esc(p)}</p>" for p in explanations["text"])
        if explanations["table"] is not None:
            explained += to_html(explanations["table"])
        explained += _figures_html(explanations["panels"])
    calibration = calibration_table(summary)
    calibrated = ""
    if calibration is not None:
        calibrated = (
            f"<h2>Calibration (pooled out-of-fold)</h2><p>{esc(calibration_text(summary))}</p>"
            f"{to_html(calibration)}"
        )
    banner = f'<p class="synthetic">{esc(SYNTHETIC_TEXT)}</p>' if summary.get("synthetic_data") else ""
    clinical = ""
    if "operating_points" in summary:
        clinical += "<h2>Operating points of the critical class</h2>"
        clinical += f"<p>{esc(summary['operating_points']['text'])}</p>"
        clinical += "".join(
            f"<p>{esc(caption)}</p>{to_html(table, summary_rows=1)}"
            for caption, table in operating_point_tables(summary)
        )
    if "subgroups" in summary:
        subgroups = subgroup_table(summary)
        clinical += f"<h2>Subgroups (pooled out-of-fold)</h2><p>{esc(summary['subgroups']['text'])}</p>"
        clinical += "" if subgroups is None else to_html(subgroups)
    decision = decision_table(summary)
    if decision is not None:
        clinical = (
            f"<h2>Decision rule (pooled out-of-fold)</h2><p>{esc(decision_text(summary))}</p>{to_html(decision)}"
            + clinical
        )
    warning = headline_warning(summary)
    if warning:
        banner += f'<p class="warning">{esc(warning)}</p>'
    recipe = recipe_table(summary)
    recipe_html = "" if recipe is None else f"<h2>Training recipe</h2>{to_html(recipe)}"
    definitions = "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in summary["definitions"].items())
    return html_page(
        title,
        f"{banner}<h2>Protocol</h2><dl>{protocol}</dl>{recipe_html}"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + f"<h2>Results per fold</h2><p>{esc(results_intro(summary))}</p>"
        f"{to_html(fold_table(summary), summary_rows=fold_summary_rows(summary))}"
        f"<h2>Per class (pooled out-of-fold)</h2><p>{esc(sensitivity_intro(summary))}</p>"
        f"{to_html(class_table(summary))}{clinical}{calibrated}"
        f"<h2>Figures</h2>{images}{explained}<h2>Definitions</h2><ul>{definitions}</ul>",
    )


def _figures_html(figures: list[tuple[str, bytes]]) -> str:
    esc = html.escape
    return "".join(
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, png in figures
    )
