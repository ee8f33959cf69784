"""MODEL_CARD.md of an exported package: what the model is, what it was measured on, and what it is not for."""

from __future__ import annotations

from typing import Any

from medsg.calibration import DECISION_TEXT
from medsg.config import TTA_TEXT, Config
from medsg.report.tables import COLUMN_TITLES, fmt

SINGLE_FOLD_WARNING = (
    "These cross-validated metrics describe single-fold models, each tested once on the fold it never saw. "
    "They do not describe the shipped ensemble (the mean of all fold models), nor the final model trained on "
    "every image: no held-out data measured either. Measure them on an external test set with "
    "`medsg evaluate`."
)


def _cv_table(summary: dict[str, Any]) -> list[str]:
    ci, mean_sd = summary.get("bootstrap_ci", {}), summary.get("mean_sd", {})
    lines = ["| Metric | Pooled out-of-fold [95% CI] | Mean ± SD over folds |", "|---|---|---|"]
    for key, title in COLUMN_TITLES.items():
        if key not in ci:
            continue
        c, m = ci[key], mean_sd.get(key, {})
        lines.append(
            f"| {title} | {fmt(c['point'])} [{fmt(c['low'])}, {fmt(c['high'])}] | "
            f"{fmt(m.get('mean'))} ± {fmt(m.get('sd'))} |"
        )
    return lines


def _calibration_lines(meta: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = []
    for m in meta["members"]:
        cal = m.get("calibration") or {}
        how = cal.get("fitted_on") or cal.get("reason") or "not recorded"
        warning = f"; {cal['warning']}" if cal.get("warning") else ""
        lines.append(f"- `{m['name']}`: T = {m['temperature']:.3f} ({how}{warning})")
    cal = summary.get("calibration")
    if cal:
        lines += ["", "| Pooled out-of-fold | before [95% CI] | after [95% CI] |", "|---|---|---|"]
        for key in ("ece", "brier", "log_loss"):
            b, a = cal["before"][key], cal["after"][key]
            lines.append(
                f"| {COLUMN_TITLES[key]} | {fmt(b['point'])} [{fmt(b['low'])}, {fmt(b['high'])}] | "
                f"{fmt(a['point'])} [{fmt(a['low'])}, {fmt(a['high'])}] |"
            )
    return lines


def _members_text(meta: dict[str, Any], final_plan: dict[str, Any]) -> list[str]:
    folds = [m for m in meta["members"] if m["kind"] == "fold"]
    final = [m for m in meta["members"] if m["kind"] == "all"]
    lines = []
    seeds = len(folds[0]["weights"]) if folds and isinstance(folds[0]["weights"], list) else 1
    if seeds > 1:
        lines.append(
            f"- **Seed ensemble** ({len(folds)} folds x {seeds} seeds = {len(folds) * seeds} networks, the "
            "default): each fold's member averages the softmax outputs of its seeds' selected weights, then "
            "applies that fold's temperature and prior shift (fitted on the same average of its inner validation "
            "predictions); a prediction is the mean over the folds, and their spread is reported as an "
            "uncertainty."
        )
    elif folds:
        lines.append(
            f"- **Fold ensemble** ({len(folds)} models, the default): each cross-validation fold's selected "
            "weights; a prediction is the mean of their temperature-scaled probabilities, and their spread is "
            "reported as an uncertainty."
        )
    if final:
        lines.append(
            f"- **Final model** (`--models all`): trained on every image for {final_plan.get('epochs', '?')} "
            f"epoch(s) ({final_plan.get('epochs_rule', 'rule not recorded')}). It had no validation split, so "
            f"its temperature is {final[0]['temperature']:.3f}, the "
            f"{final_plan.get('temperature_rule', 'median of the folds')}; its performance was not measured."
        )
    return lines


def render_model_card(
    meta: dict[str, Any],
    config: Config,
    summary: dict[str, Any],
    stats: dict[str, Any],
    final_plan: dict[str, Any],
) -> str:
    """The model card as Markdown, from package.json, the run's config, summary.json and the training stats."""
    proto = summary.get("protocol", {})
    prep = meta["preprocessing"]
    pretrained = config.pretrained_as_given or "none (trained from scratch)"
    decision = config.eval.decision
    rule = DECISION_TEXT.get(decision, decision)
    lines = [
        f"# Model card: {meta['experiment']}",
        "",
        "## Model",
        "",
        f"- Architecture: `{meta['arch']}` (timm), starting weights: {pretrained}",
        *(
            [
                f"- Distilled from: {', '.join(config.train.distill_teachers)} (each fold taught by their fold models)"
            ]
            if config.train.distill_teachers
            else []
        ),
        f"- Classes, in output order: {', '.join(meta['class_names'])}",
        f"- Input: RGB, resized ({prep['interpolation']}) to {prep['img_size']}x{prep['img_size']} "
        f"({prep['resize']}), normalised with mean {list(prep['mean'])} and std {list(prep['std'])}",
        *_members_text(meta, final_plan),
        *_dtype_text(meta.get("weights_dtype", "float32")),
        "- Probabilities are calibrated (temperature scaling per model, see Calibration); `medsg predict` "
        "and `medsg evaluate` report calibrated probabilities.",
        f"- Decision rule (`eval.decision: {decision}`): the predicted class is {rule}.",
        *(
            [f"- Test-time augmentation (`eval.tta`): {TTA_TEXT}; `medsg predict` always applies it."]
            if config.eval.tta
            else []
        ),
        "",
        "## Training data",
        "",
        f"- Dataset: `{config.data.adapter}` at `{config.root_as_given}`; {stats.get('n_images', '?')} images after "
        f"the audit policy (removed by it: {proto.get('images dropped by the audit policy', 'unknown')})",
        f"- Image sizes: width {stats.get('width')}, height {stats.get('height')} px; "
        f"channels {stats.get('channels')}",
        # "grouping description": the key in summaries written before the protocol said it in words
        f"- Grouping of the splits: {proto.get('groups kept together', proto.get('grouping description', 'unknown'))}",
        "",
        "## Protocol",
        "",
        f"- Cross-validation: {proto.get('cross-validation', 'unknown')}; model selection: "
        f"{proto.get('model selection', 'unknown')}; {proto.get('epochs', '?')} epochs",
        "- Calibration: one temperature per fold, fitted on that fold's inner validation predictions at the "
        "selected epoch, never on its test fold.",
        "",
        "## Cross-validated performance",
        "",
        f"**{SINGLE_FOLD_WARNING}**",
        "",
        *(_cv_table(summary) if summary else ["No cross-validation summary (final model only)."]),
        "",
        "## Calibration",
        "",
        *_calibration_lines(meta, summary),
        "",
        "## Intended use",
        "",
        "Research on medical image classification: reproducing, comparing and inspecting models. It is not a "
        "medical device and must not be used to diagnose, triage or treat anyone.",
        "",
        "## Known limits",
        "",
        f"- Trained on one dataset (`{config.data.adapter}`); other devices, sites, populations and "
        "acquisition protocols are untested.",
        "- `medsg predict` flags inputs whose folds disagree or whose size, channels or grey levels lie far "
        "outside the training images' range; it does not catch images that look like the training data but "
        "show something else (another organ, another disease, a label outside the classes above).",
        "- The package holds 32x32 grey thumbnails and hashes of the training images "
        "(`training_fingerprints.npz`) so `medsg evaluate` can find training images in a test set.",
        "",
        "## Files",
        "",
        "Every file's SHA-256 is in `CHECKSUMS.sha256`; medsg refuses a package whose files differ from it.",
        "",
    ]
    return "\n".join(lines)


def _dtype_text(dtype: str) -> list[str]:
    """A line for weights stored below float32 (``medsg export --weights-dtype``), none otherwise."""
    if dtype == "float32":
        return []
    return [
        f"- Weights are stored in {dtype} and loaded into float32: probabilities differ from the run's by rounding "
        "only (the cross-validation figures below are the run's own)."
    ]
