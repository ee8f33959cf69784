"""Operating points of the clinically critical class: sensitivity at a fixed specificity and the reverse.

A clinician deploys a threshold, not an AUROC. The threshold on the critical class's probability (one class
against the rest) is fixed on each fold's inner validation predictions (``fold_K/val_predictions.csv``, the
selected checkpoint) and applied unchanged to that fold's test images, so the test fold never tunes it and the
achieved test sensitivity / specificity is what a new patient would see. Pooled figures call each test image
with its own fold's threshold; their CIs come from the report's one cluster bootstrap
(``medsg.metrics.grouped_bootstrap_ci``), resampling the split's groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from pydantic import ValidationError
from sklearn.metrics import roc_curve

from medsg.config import EvalConfig
from medsg.core.errors import ConfigError
from medsg.metrics import grouped_bootstrap_ci

# the class whose misses matter most, per dataset (``data.adapter``); other datasets have none by default
CRITICAL_CLASS = {"busi": "malignant", "isic2018": "MEL"}
_TOL = 1e-9  # rates are ratios of counts: 1 - 0.1 must still count as >= 0.90


def eval_settings(section: Any) -> EvalConfig:
    """The run's ``eval`` settings from its config.yaml; keys an older run lacks take EvalConfig's defaults.

    Unknown keys are ignored (a report must still read a run saved by other code); bad values are a ConfigError.
    """
    known = (
        {k: v for k, v in section.items() if k in EvalConfig.model_fields}
        if isinstance(section, dict)
        else {}
    )
    try:
        return EvalConfig(**known)
    except ValidationError as exc:
        problems = "; ".join(f"eval.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"config.yaml of the run: {problems}") from exc


def critical_class(
    configured: str | None, adapter: Any, class_names: Sequence[str]
) -> tuple[str | None, str]:
    """(the critical class or None, how it was chosen or why there is none).

    An explicit ``eval.critical_class`` must be one of the classes (else ConfigError); a dataset default that
    the run's classes lack (a renamed class list) only leaves the section out, with the reason.
    """
    names = list(class_names)
    if configured is not None:
        if configured not in names:
            raise ConfigError(
                f"eval.critical_class is {configured!r}, which is not one of the run's classes {names}; "
                "set it to one of them or to null for the dataset default"
            )
        return configured, "set by eval.critical_class"
    default = CRITICAL_CLASS.get(str(adapter))
    if default is None:
        return None, (
            f"Dataset {str(adapter)!r} has no default critical class, so no operating points are reported; "
            "set eval.critical_class to one of the classes to get them."
        )
    if default not in names:
        return None, (
            f"The {adapter} default critical class {default!r} is not among this run's classes ({', '.join(names)}), "
            "so no operating points are reported; set eval.critical_class to one of them."
        )
    return default, f"the {adapter} default; eval.critical_class is null"


def threshold_at_specificity(y_true: ArrayLike, score: ArrayLike, specificity: float) -> float:
    """Lowest threshold t (positive when score >= t) whose specificity on (y_true, score) is >= ``specificity``.

    The lowest such threshold calls the most images positive, so it has the highest sensitivity allowed by the
    target. ``inf`` when only calling nothing positive reaches the target (ties of negatives at the top).
    """
    fpr, _, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    ok = np.flatnonzero(1.0 - fpr >= specificity - _TOL)  # fpr grows as the threshold falls
    return float(thresholds[ok[-1]])


def threshold_at_sensitivity(y_true: ArrayLike, score: ArrayLike, sensitivity: float) -> float:
    """Highest threshold t (positive when score >= t) whose sensitivity on (y_true, score) is >= ``sensitivity``.

    The highest such threshold calls the fewest images positive, so it has the highest specificity allowed.
    """
    _, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= sensitivity - _TOL)  # tpr grows as the threshold falls; the last is 1
    return float(thresholds[ok[0]])


def rates(y_true: ArrayLike, score: ArrayLike, threshold: float) -> dict[str, float | None]:
    """Sensitivity and specificity of ``score >= threshold`` against binary ``y_true`` (None where undefined)."""
    y = np.asarray(y_true, dtype=bool)
    called = np.asarray(score, dtype=np.float64) >= threshold
    return {
        "sensitivity": float(called[y].mean()) if y.any() else None,
        "specificity": float((~called[~y]).mean()) if (~y).any() else None,
    }


def operating_points(
    val: Mapping[int, pd.DataFrame | None],
    test: pd.DataFrame,
    class_names: Sequence[str],
    critical: str,
    fixed_specificity: float,
    fixed_sensitivity: float,
    groups: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per fold threshold and achieved val/test rates, and pooled test rates with cluster-bootstrap 95% CIs.

    ``val`` maps each fold to its inner validation predictions (None: the fold has no val_predictions.csv);
    ``test`` holds the pooled out-of-fold predictions (columns ``fold``, ``y_true``, ``p_<class>``) and
    ``groups`` one split group per ``test`` row (None: images are resampled).
    """
    c = list(class_names).index(critical)
    column = f"p_{critical}"
    left_out, used = [], []
    for fold in sorted(int(f) for f in pd.unique(test["fold"])):
        frame = val.get(fold)
        if frame is None:
            left_out.append(
                {
                    "fold": fold,
                    "reason": f"fold_{fold} has no val_predictions.csv (a run older than inner-validation "
                    "predictions, or one without an inner validation split), so it has no threshold to apply",
                }
            )
            continue
        positives = int((frame["y_true"] == c).sum())
        if positives == 0 or positives == len(frame):
            what = "no" if positives == 0 else "only"
            left_out.append(
                {
                    "fold": fold,
                    "reason": f"fold_{fold}'s inner validation split has {what} {critical} images, so no "
                    "threshold can be fixed on it",
                }
            )
            continue
        used.append(fold)
    base = {"critical_class": critical, "folds_used": used, "folds_left_out": left_out}
    if not used:
        return base | {"available": False, "points": []}

    in_used = test["fold"].isin(used).to_numpy()
    y_test = test["y_true"].to_numpy() == c
    score_test = test[column].to_numpy(dtype=np.float64)
    group_used = None if groups is None else np.asarray(groups)[in_used]
    targets = (("specificity", fixed_specificity), ("sensitivity", fixed_sensitivity))
    points = []
    for target, value in targets:
        called = np.zeros(len(test), dtype=bool)
        per_fold = []
        for fold in used:
            frame = val[fold]
            y_val, score_val = frame["y_true"].to_numpy() == c, frame[column].to_numpy(dtype=np.float64)
            pick = threshold_at_specificity if target == "specificity" else threshold_at_sensitivity
            threshold = pick(y_val, score_val, value)
            rows = (test["fold"] == fold).to_numpy()
            called[rows] = score_test[rows] >= threshold
            on_val, on_test = (
                rates(y_val, score_val, threshold),
                rates(y_test[rows], score_test[rows], threshold),
            )
            per_fold.append(
                {
                    "fold": fold,
                    "threshold": threshold if math.isfinite(threshold) else None,
                    "val_n": len(frame),
                    "val_sensitivity": on_val["sensitivity"],
                    "val_specificity": on_val["specificity"],
                    "test_n": int(rows.sum()),
                    "test_sensitivity": on_test["sensitivity"],
                    "test_specificity": on_test["specificity"],
                    "note": None
                    if math.isfinite(threshold)
                    else "no threshold short of calling no image positive reaches the target on inner "
                    "validation: every test image is called negative",
                }
            )
        hit = called == y_test  # a positive called positive, or a negative called negative
        pos, neg = y_test[in_used], ~y_test[in_used]
        pooled = {
            "n": int(in_used.sum()),
            "sensitivity": _ci(np.where(pos, hit[in_used], np.nan), group_used, n_bootstrap, seed),
            "specificity": _ci(np.where(neg, hit[in_used], np.nan), group_used, n_bootstrap, seed),
        }
        achieved = "sensitivity" if target == "specificity" else "specificity"
        points.append(
            {
                "target": target,
                "value": value,
                "name": f"{achieved} at {target} {value:.2f}",
                "rule": rule_text(target, value, critical),
                "per_fold": per_fold,
                "pooled": pooled,
            }
        )
    return base | {"available": True, "points": points}


def rule_text(target: str, value: float, critical: str) -> str:
    """The threshold rule in words, e.g. 'the lowest threshold ... whose inner-validation specificity is >= 0.90'."""
    if target == "specificity":
        return (
            f"the lowest threshold on p({critical}) whose inner-validation specificity is >= {value:.2f} "
            "(the most sensitive threshold that keeps the target), applied unchanged to the fold's test images"
        )
    return (
        f"the highest threshold on p({critical}) whose inner-validation sensitivity is >= {value:.2f} "
        "(the most specific threshold that keeps the target), applied unchanged to the fold's test images"
    )


def section_text(result: dict[str, Any], source: str) -> str:
    """The paragraph above the operating-point tables: class, protocol, and which folds were left out."""
    critical = result["critical_class"]
    text = (
        f"Critical class: {critical} ({source}), one against the rest; an image is called {critical} when "
        f"p({critical}) >= the threshold. Each fold's threshold is fixed on its inner validation predictions "
        "(fold_K/val_predictions.csv, written with the selected checkpoint) and applied unchanged to its test "
        "fold, which never tunes it. The pooled row calls each test image with its own fold's threshold; its "
        "95% CIs are percentile bootstraps, " + _ci_words(result, critical)
    )
    for item in result["folds_left_out"]:
        text += f" Fold {item['fold']} is left out: {item['reason']}."
    if not result["available"]:
        text += (
            " No included fold has a threshold, so operating points need a run with an inner validation split "
            "(splits.inner_val_fraction > 0), whose folds write val_predictions.csv."
        )
    return text


def _ci_words(result: dict[str, Any], critical: str) -> str:
    """What the pooled CIs resample: the split's groups, or images where the run has no groups."""
    points = result.get("points") or [{}]
    unit = points[0].get("pooled", {}).get("sensitivity", {}).get("unit", "group")
    if unit == "group":
        what = (
            f"resampling the split's groups: those holding a {critical} image for the sensitivity, those holding "
            "another image for the specificity"
        )
    else:
        what = f"resampling images: the {critical} images for the sensitivity, the others for the specificity"
    return what + " (two separate bootstraps, each with the report's seed)."


def _ci(values: np.ndarray, groups: np.ndarray | None, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """Mean of the non-NaN ``values`` with its cluster-bootstrap CI, JSON-ready (None where undefined)."""
    ci = grouped_bootstrap_ci(values, groups, n_resamples=n_bootstrap, seed=seed)
    return {
        key: (None if isinstance(ci[key], float) and math.isnan(ci[key]) else ci[key])
        for key in ("point", "low", "high", "n", "n_groups", "unit")
    }
