"""Summary -> DataFrames of display strings -> Markdown / HTML tables (every cell escaped)."""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

from medsg.calibration import DECISION_TEXT
from medsg.metrics import HEADLINE

COLUMN_TITLES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "macro_f1": "Macro F1",
    "macro_auroc": "Macro AUROC",
    "ece": "ECE",
    "brier": "Brier",
    "log_loss": "Log loss",
}
CLASS_COLUMNS = ("sensitivity", "specificity", "precision", "f1", "auroc")


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table; undefined values (None/NaN) show as an en dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


SYNTHETIC_TEXT = (
    "Synthetic data: this report comes from the medsg demo's generated images, not from patients. "
    "Its numbers show the pipeline only and say nothing about any clinical task."
)


def results_intro(summary: dict[str, Any]) -> str:
    """The sentence above the fold table, the same in report.md and report.html."""
    return (
        "Per-fold rows are the outer test folds, with the epoch that selection kept. Mean ± SD is over folds "
        "(SD with ddof=1). The pooled row has a 95% CI from a "
        f"{summary['definitions']['bootstrap_ci']}. The baseline row predicts the majority class for every "
        f"image. {summary['definitions']['pooled']}"
    )


def sensitivity_intro(summary: dict[str, Any]) -> str:
    """The sentence above the per-class table: CIs, then the clinically worst confusions."""
    return (
        "Sensitivity with its 95% CI from the same bootstrap as the fold table. "
        f"{summary.get('confusions', '')}"
    ).strip()


def recipe_table(summary: dict[str, Any]) -> pd.DataFrame | None:
    """The training recipe read from the run's config.yaml."""
    rows = summary.get("recipe")
    if not rows:
        return None
    return pd.DataFrame([{"Setting": r["item"], "Value": r["value"]} for r in rows])


def fold_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per fold, then mean ± SD over folds, the pooled bootstrap CI and the majority baseline."""
    rows = [
        {"Fold": str(m["fold"]), "n": str(m["n"]), "Selected epoch": fmt(m.get("best_epoch"))}
        | {COLUMN_TITLES[k]: fmt(m[k]) for k in HEADLINE}
        for m in summary["per_fold"]
    ]
    mean_sd = summary["mean_sd"]
    rows.append(
        {"Fold": "Mean ± SD", "n": str(summary["n_pooled"]), "Selected epoch": ""}
        | {COLUMN_TITLES[k]: f"{fmt(mean_sd[k]['mean'])} ± {fmt(mean_sd[k]['sd'])}" for k in HEADLINE}
    )
    ci = summary["bootstrap_ci"]
    rows.append(
        {"Fold": "Pooled OOF [95% CI]", "n": str(summary["n_pooled"]), "Selected epoch": ""}
        | {
            COLUMN_TITLES[k]: f"{fmt(ci[k]['point'])} [{fmt(ci[k]['low'])}, {fmt(ci[k]['high'])}]"
            if k in ci
            else "–"
            for k in HEADLINE
        }
    )
    if summary.get("baseline"):
        rows.append(
            {"Fold": "Majority-class baseline", "n": str(summary["n_pooled"]), "Selected epoch": ""}
            | {COLUMN_TITLES[k]: fmt(summary["baseline"].get(k)) for k in HEADLINE}
        )
    return pd.DataFrame(rows)


def fold_summary_rows(summary: dict[str, Any]) -> int:
    """How many rows at the end of ``fold_table`` are summaries (highlighted in HTML)."""
    return 3 if summary.get("baseline") else 2


def class_table(summary: dict[str, Any]) -> pd.DataFrame:
    """Per-class metrics on the pooled out-of-fold predictions."""
    per_class = summary["pooled"]["per_class"]
    cis = summary.get("sensitivity_ci", {})

    def sensitivity(name: str) -> str:
        ci = cis.get(name)
        point = fmt(per_class[name]["sensitivity"])
        if not ci or ci.get("low") is None:
            return point
        return f"{point} [{fmt(ci['low'])}, {fmt(ci['high'])}]"

    return pd.DataFrame(
        [
            {"Class": name, "Support": str(per_class[name]["support"])}
            | {
                (col.capitalize() if col != "auroc" else "AUROC")
                + (" [95% CI]" if col == "sensitivity" and cis else ""): sensitivity(name)
                if col == "sensitivity"
                else fmt(per_class[name][col])
                for col in CLASS_COLUMNS
            }
            for name in summary["class_names"]
        ]
    )


def calibration_table(summary: dict[str, Any]) -> pd.DataFrame | None:
    """Pooled out-of-fold ECE, Brier and log loss before and after each fold's temperature, with 95% CIs."""
    cal = summary.get("calibration")
    if not cal:
        return None

    def cell(ci: dict[str, Any]) -> str:
        return f"{fmt(ci['point'])} [{fmt(ci['low'])}, {fmt(ci['high'])}]"

    return pd.DataFrame(
        [
            {
                "Metric": COLUMN_TITLES[k],
                "Raw [95% CI]": cell(cal["before"][k]),
                "Calibrated [95% CI]": cell(cal["after"][k]),
            }
            for k in ("ece", "brier", "log_loss")
        ]
    )


def calibration_text(summary: dict[str, Any]) -> str:
    """One sentence on how the temperatures were fitted, with each fold's value."""
    per_fold = summary["calibration"]["per_fold"]
    temps = ", ".join(f"fold {f['fold']}: T = {fmt(f['temperature'])}" for f in per_fold)
    unfitted = [str(f["fold"]) for f in per_fold if not f["fitted"]]
    text = (
        "Temperature scaling, one temperature per fold, fitted on that fold's inner validation predictions at "
        f"the selected epoch (never on its test fold); {temps}. The CIs of both columns come from the same "
        "bootstrap resamples. predictions.csv keeps the raw probabilities; calibrated_predictions.csv has "
        "the calibrated ones."
    )
    if unfitted:
        text += f" Folds {', '.join(unfitted)} had no validation split and keep T = 1.0 (uncalibrated)."
    cal = summary["calibration"]
    worse = [
        f"{COLUMN_TITLES[k]} {fmt(cal['before'][k]['point'], 4)} -> {fmt(cal['after'][k]['point'], 4)}"
        for k in ("ece", "brier", "log_loss")
        if cal["after"][k]["point"] is not None
        and cal["before"][k]["point"] is not None
        and cal["after"][k]["point"] > cal["before"][k]["point"]
    ]
    if worse:
        text += (
            f" Calibration made the pooled test predictions worse on {', '.join(worse)}: the temperatures fitted "
            "on the small inner validation splits did not carry over to the test folds."
        )
    few = [str(f["fold"]) for f in per_fold if f.get("warning")]
    if few:
        text += (
            f" Folds {', '.join(few)} had fewer than 50 validation images: their temperatures are unreliable."
        )
    return text


def ci_cell(ci: dict[str, Any] | None) -> str:
    """'point [low, high]', or the point alone where no CI was computed."""
    if not ci:
        return "–"
    if ci.get("low") is None:
        return fmt(ci.get("point"))
    return f"{fmt(ci['point'])} [{fmt(ci['low'])}, {fmt(ci['high'])}]"


def decision_table(summary: dict[str, Any]) -> pd.DataFrame | None:
    """Both argmax rules (balanced, prior) with accuracy, balanced accuracy, macro F1 and critical-class
    sensitivity, their 95% CIs, and the majority-class baseline's accuracy."""
    decision = summary.get("decision")
    if not decision or not decision.get("rows"):
        return None
    critical = decision.get("critical_class")
    out = []
    for row in decision["rows"]:
        cells = {
            "Rule": row["rule"] + (" (headline)" if row["headline"] else ""),
            **{COLUMN_TITLES[k]: ci_cell(row[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
        }
        if critical and "critical_sensitivity" in row:
            cells[f"{critical} sensitivity"] = ci_cell(row["critical_sensitivity"])
        cells["Beats the majority class"] = "no" if row["below_majority_baseline"] else "yes"
        out.append(cells)
    return pd.DataFrame(out)


def decision_text(summary: dict[str, Any]) -> str:
    """The sentences above the decision table: what each rule means, the folds' strengths, the baseline."""
    decision = summary["decision"]
    rules = [r["rule"] for r in decision["rows"]] or ["balanced"]
    text = f"{len(rules)} decision rule{'s' if len(rules) > 1 else ''} on the same models. " + " ".join(
        f"{rule}: {DECISION_TEXT[rule]}." for rule in rules
    )
    if "prior" in rules:
        text += (
            " The shift is softmax(log p_T + s log prior), with s fitted by NLL on the inner validation split"
            + (" (prior) or by the floor's search (majority_floor)" if "majority_floor" in rules else "")
            + ", never the test fold."
        )
    text += (
        f" The headline, predict and evaluate use the {decision['headline']} rule (eval.decision). "
        f"Majority-class accuracy: {fmt(decision['baseline_accuracy'])}."
    )
    strengths = []
    for f in decision["per_fold"]:
        cell = f"fold {f['fold']}: s = {fmt(f['strength'], 2)}" + ("" if f["fitted"] else " (not fitted)")
        if "majority_floor" in rules and f.get("floor_strength") is not None:
            cell += f", floor s = {fmt(f['floor_strength'], 2)}"
            cell += " (floor not reached on validation)" if f.get("floor_met") is False else ""
        strengths.append(cell)
    if strengths:
        text += f" Strengths: {', '.join(strengths)}."
    return text + (f" {decision['note']}" if decision.get("note") else "")


def operating_point_tables(summary: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """(caption, table) per operating point: each fold's threshold and achieved rates, then the pooled CIs."""
    out = []
    for point in (summary.get("operating_points") or {}).get("points", []):
        rows = [
            {
                "Fold": str(f["fold"]),
                "Threshold": "none reached" if f["threshold"] is None else fmt(f["threshold"], 4),
                "Val n": str(f["val_n"]),
                "Val sensitivity": fmt(f["val_sensitivity"]),
                "Val specificity": fmt(f["val_specificity"]),
                "Test n": str(f["test_n"]),
                "Test sensitivity": fmt(f["test_sensitivity"]),
                "Test specificity": fmt(f["test_specificity"]),
            }
            for f in point["per_fold"]
        ]
        pooled = point["pooled"]
        rows.append(
            {"Fold": "Pooled OOF [95% CI]", "Threshold": "per fold", "Val n": "", "Val sensitivity": ""}
            | {"Val specificity": "", "Test n": str(pooled["n"])}
            | {"Test sensitivity": ci_cell(pooled["sensitivity"])}
            | {"Test specificity": ci_cell(pooled["specificity"])}
        )
        notes = "".join(f" Fold {f['fold']}: {f['note']}." for f in point["per_fold"] if f.get("note"))
        caption = f"{point['name'].capitalize()}: each fold's threshold is {point['rule']}.{notes}"
        out.append((caption, pd.DataFrame(rows)))
    return out


def subgroup_table(summary: dict[str, Any]) -> pd.DataFrame | None:
    """One row per subgroup; a subgroup under eval.min_subgroup_size shows point values only, flagged."""
    section = summary.get("subgroups") or {}
    if not section.get("rows"):
        return None
    critical = section.get("critical_class")
    rows = []
    for r in section["rows"]:
        row = {
            "Column": r["column"],
            "Subgroup": r["value"],
            "Images": str(r["n_images"]),
            "Groups": str(r["n_groups"]),
            "Balanced acc. [95% CI]": ci_cell(r["balanced_accuracy"]),
        }
        if critical:
            sens = r["sensitivity"]
            row[f"{critical} sensitivity [95% CI]"] = (
                f"{ci_cell(sens)} (n = {sens['support']})" if sens["support"] else "–"
            )
        size = section["min_subgroup_size"]
        flags = [f"too small (< {size} images): no CI"] if r["too_small"] else []
        if critical and r.get("critical_too_small") and not r["too_small"]:
            flags.append(f"< {size} {critical} cases: sensitivity without CI")
        rows.append(row | {"Flag": "; ".join(flags)})
    return pd.DataFrame(rows)


def md_escape(text: Any) -> str:
    """Text safe in Markdown, and still readable in the raw file: no HTML entities such as ``&lt;=``.

    Markdown renderers pass raw HTML through, so what could start a tag (``<`` before a letter, ``/``, ``!``
    or ``?``) or an entity (``&name;``) is backslash-escaped, as are backslashes, backticks, ``*`` and the
    ``](`` of an inline link; ``<= 40``, ``[95% CI]`` and ids with ``_`` stay as they are.
    """
    text = re.sub(r"([\\`*])", r"\\\1", str(text))
    text = text.replace("](", "\\](")
    text = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", text)
    return re.sub(r"&(?=#?\w+;)", r"\\&", text)


def to_markdown(frame: pd.DataFrame) -> str:
    """Pipe table; cells go through ``md_escape``, and '|' is escaped so it cannot split a row."""
    cells = [[_md_cell(c) for c in frame.columns]] + [
        [_md_cell(v) for v in row] for row in frame.itertuples(False)
    ]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def to_html(frame: pd.DataFrame, summary_rows: int = 0) -> str:
    """Plain <table>; every header and cell goes through html.escape. The last ``summary_rows`` rows (e.g.
    mean ± SD and pooled) get ``class="summary"`` so they stand out; no other table's rows do."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    first_summary = len(frame) - summary_rows
    body = "".join(
        ('<tr class="summary">' if i >= first_summary else "<tr>")
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        + "</tr>"
        for i, row in enumerate(frame.itertuples(index=False))
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_cell(value: Any) -> str:
    return md_escape(value).replace("|", "\\|").replace("\n", " ")
