"""The decision rule's section of a report: every argmax rule side by side, and which one is the headline.

``balanced`` is the argmax of the model as trained (a class-balanced loss aims at a uniform prior: balanced
accuracy); ``prior`` is the argmax after each fold's prior shift, fitted on its inner validation predictions
(``medsg.calibration``), which aims at the training prior (accuracy); ``majority_floor`` is the partial shift in
between (the best inner-validation balanced accuracy that keeps accuracy at the majority class's share).
``eval.decision`` says which one the headline, ``predict`` and ``evaluate`` use; the table shows all the rules
the folds can apply, so nobody reads one without the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsg.calibration import DECISION_TEXT, DECISIONS, PRIOR_KEY, decide, has_rule, lacking_words
from medsg.metrics import bootstrap_ci, sensitivity_cis

DECISION_KEYS = ("accuracy", "balanced_accuracy", "macro_f1")


def shifted_probs(run: Any, rule: str) -> np.ndarray | None:
    """The pooled OOF probabilities under a shifted ``rule`` (each fold's temperature, then its prior shift
    with the rule's strength), in ``run.oof`` order; None when a fold cannot apply it (calibrated by a medsg
    that did not fit it)."""
    if run.calibrated is None or not all(has_rule(run.calibration.get(f, {}), rule) for f in run.folds):
        return None
    out = np.empty((len(run.oof), len(run.class_names)))
    calibrated = run.probs(run.calibrated)
    for fold in run.folds:
        rows = (run.oof["fold"] == fold).to_numpy()
        out[rows] = decide(calibrated[rows], run.calibration[fold], rule)
    return out


def rule_probs(run: Any) -> dict[str, np.ndarray]:
    """Every rule the run's folds can apply, with its pooled OOF probabilities (``balanced`` always)."""
    out = {"balanced": run.probs()}
    for rule in DECISIONS[1:]:
        probs = shifted_probs(run, rule)
        if probs is not None:
            out[rule] = probs
    return out


def headline_rule(requested: str, available: set[str] | dict[str, Any]) -> tuple[str, str]:
    """(the rule the headline uses, a note when it is not the requested one); ``available``: the rules the
    folds can apply."""
    if requested not in DECISIONS:
        return "balanced", f"eval.decision {requested!r} is unknown; the headline uses the balanced rule"
    if requested not in available:
        return "balanced", (
            f"eval.decision is {requested}, but the folds have no {lacking_words(requested)} (calibrated "
            "before medsg fitted one): the headline uses the balanced rule"
        )
    return requested, ""


def decision_summary(
    run: Any,
    requested: str,
    candidates: dict[str, np.ndarray],
    groups: np.ndarray | None,
    baseline_accuracy: float,
    critical: str | None,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """summary.json's ``decision``: each rule's accuracy, balanced accuracy, macro F1 and critical-class
    sensitivity with CIs, the folds' prior-shift strengths, and which rule the headline uses. ``candidates``
    is ``rule_probs(run)``."""
    y = run.oof["y_true"].to_numpy()
    headline, note = headline_rule(requested, candidates)
    rows = []
    for rule, probs in candidates.items():
        cis = bootstrap_ci(y, probs, run.class_names, n_resamples=n_bootstrap, seed=seed, groups=groups)
        row: dict[str, Any] = {"rule": rule, "meaning": DECISION_TEXT[rule], "headline": rule == headline}
        row |= {k: cis[k] for k in DECISION_KEYS}
        if critical in run.class_names:
            sens = sensitivity_cis(y, probs, run.class_names, n_bootstrap, seed, groups=groups)
            row["critical_sensitivity"] = sens[critical]
        row["below_majority_baseline"] = bool(cis["accuracy"]["point"] < baseline_accuracy)
        rows.append(row)
    strengths = [
        {
            "fold": f,
            "strength": rec[PRIOR_KEY]["strength"],
            "floor_strength": rec[PRIOR_KEY].get("floor_strength"),
            "floor_met": rec[PRIOR_KEY].get("floor_met"),
            "fitted": rec[PRIOR_KEY].get("fitted", False),
            "class_prior": rec[PRIOR_KEY]["class_prior"],
        }
        for f, rec in run.calibration.items()
        if PRIOR_KEY in rec
    ]
    return {
        "requested": requested,
        "headline": headline,
        "note": note,
        "critical_class": critical,
        "baseline_accuracy": baseline_accuracy,
        "rows": rows,
        "per_fold": strengths,
    }


def headline_warning(summary: dict[str, Any]) -> str:
    """The sentence a report opens with when an accuracy it shows (the headline's, or another rule's in the
    Decision rule table) is below the majority-class baseline's; "" when none is."""
    acc, base = summary["pooled"]["accuracy"], summary["baseline"]["accuracy"]
    decision = summary.get("decision", {})
    rows = decision.get("rows", [])
    others_below = [r for r in rows if not r["headline"] and r["below_majority_baseline"]]
    if acc >= base:
        if not others_below:
            return ""
        row = others_below[0]
        return (
            f"Under the {row['rule']} rule (in the Decision rule table) accuracy is {row['accuracy']['point']:.3f}, "
            f"below the majority-class baseline's {base:.3f}; the headline ({decision.get('headline')} rule) has "
            f"{acc:.3f}."
        )
    text = (
        f"Accuracy {acc:.3f} is below the majority-class baseline's {base:.3f}: this model's headline "
        f"argmax ({decision.get('headline', 'balanced')} rule) is worse than always answering the most common class."
    )
    others = [r for r in rows if not r["headline"] and not r["below_majority_baseline"]]
    if others:
        text += f" Under the {others[0]['rule']} rule its accuracy is {others[0]['accuracy']['point']:.3f} (see Decision rule)."
    return text
