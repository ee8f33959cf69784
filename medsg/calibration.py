"""Temperature scaling (Guo et al. 2017): one scalar T per model, fitted after selection, never on test data.

Why temperature scaling: it divides the logits by T, so the predicted class (argmax) never changes, only how
confident the probabilities are; one parameter cannot overfit a small inner validation split the way
vector or matrix scaling can.

Why it works on stored probabilities: softmax ignores a constant added to a row, and ``log p = z - logsumexp(z)``
differs from the logits ``z`` by such a constant, so ``softmax(log p / T) == softmax(z / T)``. Calibration is
therefore a pure function of the probabilities a fold already wrote (``predictions.csv``), applied after the
fact: training, selection and the raw predictions stay exactly as they were.

The protocol (what ``medsg.train.fold`` does):

* each fold fits T on its inner validation predictions at the selected epoch (``val_predictions.csv``): the
  split used for selection, never the outer test fold;
* a fold without a validation split (``selection: last_epoch`` and ``splits.inner_val_fraction: 0``) keeps
  T = 1.0 (uncalibrated) and ``calibration.json`` says so;
* the final model trained on every image (``--fold all``) has no validation data: its T is the median of the
  folds' temperatures.

The decision rule (``eval.decision``). A model trained with a class-balanced loss estimates p(y|x) as if every
class were equally common, so its argmax throws away accuracy on data with the training prior. Beside T, each
fold fits a prior shift on the same inner validation predictions: ``softmax(log p_T + s * log prior)``, with
``prior`` the class frequencies of the fold's training images and the one strength ``s`` chosen by the NLL on
the inner validation split (s = 1 is the exact logit adjustment of Menon et al. 2021; s = 0 changes nothing).
``balanced`` decides by the argmax of p_T (a uniform prior: balanced accuracy), ``prior`` by the argmax after
the shift (the training prior: accuracy). ``majority_floor`` sits between them: of the strengths in
``FLOOR_GRID``, the one with the best inner-validation balanced accuracy whose inner-validation accuracy still
reaches the majority class's share, so the model is never worse than "always the common class" there and
otherwise as fair to the rare classes as it can be. A weak model (ISIC, a 72 % class) shows why both ends fail:
the NLL strength calls nearly everything the common class, s = 0 almost never does. The final model takes the
median strengths of the folds and the class frequencies of all its training images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medsg.metrics import classification_metrics

VAL_PREDICTIONS = "val_predictions.csv"  # a fold's inner validation probabilities at the selected epoch
CALIBRATION_FILE = "calibration.json"  # a fold's temperature and its before/after scores
CALIBRATED_PREDICTIONS = "calibrated_predictions.csv"  # a fold's test predictions after its temperature
BETA_BOUNDS = (0.05, 20.0)  # inverse temperature 1/T searched in [1/20, 20]
STRENGTH_BOUNDS = (-3.0, 3.0)  # prior-shift strength s searched in [-3, 3] (0: no shift, 1: logit adjustment)
DECISIONS = ("balanced", "prior", "majority_floor")  # eval.decision: what the argmax means (module docstring)
PRIOR_KEY = "prior_shift"  # calibration.json's record of the decision rule
STRENGTH_KEY = {"prior": "strength", "majority_floor": "floor_strength"}  # each shifted rule's strength
FLOOR_GRID = np.round(np.arange(0.0, 3.0 + 1e-9, 0.05), 2)  # strengths the majority_floor rule tries
DECISION_TEXT = {  # what each rule's argmax means: the report, the model card and predict all say it this way
    "balanced": "the argmax of the (temperature-scaled) probabilities, the class-balanced model's own rule: it "
    "serves balanced accuracy, not accuracy on data with the training class mix",
    "prior": "the argmax after each model's prior shift toward its training class frequencies, fitted on its "
    "inner validation split: it serves accuracy on data with the training class mix",
    "majority_floor": "the argmax after each model's partial prior shift: of the strengths 0 to 3, the one with "
    "the best inner-validation balanced accuracy whose inner-validation accuracy reaches the majority class's "
    "share: it serves balanced accuracy without falling below the majority class's accuracy",
}
FEW_VAL = 50  # a temperature fitted on fewer validation images is recorded with a warning
_TINY = 1e-45  # float32 softmax can round a probability to 0; its log must stay finite


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` as float64 with exact zeros replaced by a tiny value (a finite stand-in for the logits)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities of logits divided by T (rows sum to 1, argmax unchanged)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    scaled = log_probs(probs) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    return out / out.sum(axis=1, keepdims=True)


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (natural log)."""
    y = np.asarray(y, dtype=np.int64)
    return float(-log_probs(probs)[np.arange(len(y)), y].mean())


def _bounded_argmin(loss: Any, bounds: tuple[float, float]) -> float:
    """The minimiser of a convex scalar loss on ``bounds``: deterministic, no learning rate."""
    from scipy.optimize import minimize_scalar

    return float(minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-7}).x)


def _mean_nll_of_logits(y: np.ndarray, logits: np.ndarray) -> float:
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float((lse - logits[np.arange(len(y)), y]).mean())


def fit_temperature(y: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """The T that minimises the NLL of ``softmax(log p / T)`` on (y, probs).

    The NLL is convex in the inverse temperature beta = 1/T (a log-sum-exp minus a linear term), so a bounded
    scalar search finds the one minimum; it is deterministic and needs no learning rate.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on zero predictions")
    z = log_probs(probs)
    return 1.0 / _bounded_argmin(lambda beta: _mean_nll_of_logits(y, beta * z), BETA_BOUNDS)


def class_prior(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Class frequencies of training labels; a class absent from them counts as half an image (finite log)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    counts = np.where(counts > 0, counts, 0.5)
    return counts / counts.sum()


def apply_prior_shift(probs: np.ndarray, prior: Sequence[float] | np.ndarray, strength: float) -> np.ndarray:
    """``softmax(log p + s * log prior)``: calibrated probabilities moved toward the training prior."""
    shifted = log_probs(probs) + strength * np.log(np.asarray(prior, dtype=np.float64))[None, :]
    shifted -= shifted.max(axis=1, keepdims=True)
    out = np.exp(shifted)
    return out / out.sum(axis=1, keepdims=True)


def fit_prior_strength(y: Sequence[int] | np.ndarray, probs: np.ndarray, prior: Sequence[float]) -> float:
    """The strength s minimising the NLL of ``apply_prior_shift(probs, prior, s)`` (convex in s)."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("cannot fit a prior shift on zero predictions")
    z, log_prior = log_probs(probs), np.log(np.asarray(prior, dtype=np.float64))[None, :]
    return _bounded_argmin(lambda s: _mean_nll_of_logits(y, z + s * log_prior), STRENGTH_BOUNDS)


def fit_floor_strength(
    y: Sequence[int] | np.ndarray, probs: np.ndarray, prior: Sequence[float]
) -> dict[str, Any]:
    """The ``majority_floor`` strength on (y, probs): of ``FLOOR_GRID``, the best balanced accuracy among the
    strengths whose accuracy reaches the majority class's share of ``y`` (ties: the higher accuracy, then the
    smaller s). When none reaches it, the most accurate strength, recorded with ``floor_met`` False."""
    from sklearn.metrics import balanced_accuracy_score

    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("cannot fit a prior shift on zero predictions")
    floor = float(np.bincount(y).max() / len(y))
    # the argmax of the shift needs no softmax: log p + s log prior, with log p taken once for the whole grid
    z, log_prior = log_probs(probs), np.log(np.asarray(prior, dtype=np.float64))[None, :]
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a strength may predict a class the validation split lacks
        for s in FLOOR_GRID:
            pred = (z + s * log_prior).argmax(axis=1)
            scores.append((float((pred == y).mean()), float(balanced_accuracy_score(y, pred)), float(s)))
    met = [row for row in scores if row[0] >= floor]
    acc, bal, s = (
        max(met, key=lambda r: (r[1], r[0], -r[2])) if met else max(scores, key=lambda r: (r[0], r[1]))
    )
    return {
        "floor_strength": s,
        "floor_met": bool(met),
        "val_majority_share": floor,
        "val_accuracy_floor": acc,
        "val_balanced_accuracy_floor": bal,
    }


def prior_shift_record(
    val_y: np.ndarray | None,
    val_probs: np.ndarray | None,
    train_labels: np.ndarray,
    class_names: Sequence[str],
    strength: float | None = None,
    reason: str = "",
    floor_strength: float | None = None,
) -> dict[str, Any]:
    """calibration.json's ``prior_shift``: the training prior and the strengths of the ``prior`` and
    ``majority_floor`` rules fitted on the (temperature-scaled) inner validation predictions, or the given
    strengths (and why) when there are none."""
    prior = class_prior(train_labels, len(class_names))
    record: dict[str, Any] = {"class_prior": [float(v) for v in prior], "n_train": int(len(train_labels))}
    if val_y is None or val_probs is None or len(val_y) == 0:
        given = {"strength": float(strength or 0.0)}
        if floor_strength is not None:  # without one the model cannot apply majority_floor (has_rule says so)
            given["floor_strength"] = float(floor_strength)
        return record | given | {"fitted": False, "reason": reason}
    if np.ptp(prior) == 0:  # a shift along a constant vector changes nothing: say so instead of fitting noise
        return record | {
            "strength": 0.0,
            "floor_strength": 0.0,
            "fitted": False,
            "reason": "uniform training prior: nothing to shift",
        }
    return record | fit_prior_shift(val_y, val_probs, prior)


def fit_prior_shift(
    val_y: Sequence[int] | np.ndarray,
    val_probs: np.ndarray,
    prior: Sequence[float] | np.ndarray,
    fitted_on: str = "inner validation split at the selected epoch, after the temperature",
) -> dict[str, Any]:
    """The fitted part of a ``prior_shift`` record: both rules' strengths on (temperature-scaled) validation
    predictions for a given training prior, and what they did there."""
    fitted = fit_prior_strength(val_y, val_probs, prior)
    after = apply_prior_shift(val_probs, prior, fitted)
    y = np.asarray(val_y, dtype=np.int64)
    return fit_floor_strength(y, val_probs, prior) | {
        "strength": fitted,
        "fitted": True,
        "fitted_on": fitted_on,
        "val_nll_before": nll(y, val_probs),
        "val_nll_after": nll(y, after),
        "val_accuracy_before": float((val_probs.argmax(axis=1) == y).mean()),
        "val_accuracy_after": float((after.argmax(axis=1) == y).mean()),
    }


def decide(probs: np.ndarray, calibration: dict[str, Any], decision: str) -> np.ndarray:
    """The probabilities whose argmax is the decision: ``probs`` (temperature-scaled) as they are for
    ``balanced``, shifted by the member's ``prior_shift`` with the rule's strength otherwise."""
    if decision not in DECISIONS:
        raise ValueError(f"eval.decision must be one of {DECISIONS}, got {decision!r}")
    if decision == "balanced":
        return probs
    if not has_rule(calibration, decision):
        raise ValueError(missing_rule_text(decision))
    record = calibration[PRIOR_KEY]
    return apply_prior_shift(probs, record["class_prior"], float(record[STRENGTH_KEY[decision]]))


def has_rule(calibration: dict[str, Any], decision: str) -> bool:
    """Whether a model's calibration record can apply ``decision`` (older records lack the newer rules)."""
    return decision == "balanced" or STRENGTH_KEY[decision] in calibration.get(PRIOR_KEY, {})


def lacking_words(decision: str) -> str:
    """What a calibration record without ``decision`` lacks, in the words every refusal of it uses."""
    return "prior shift" if decision == "prior" else f"{decision} strength"


def missing_rule_text(decision: str) -> str:
    """Why a model calibrated by an older medsg cannot apply ``decision``, and what to use instead."""
    instead = "'balanced'" if decision == "prior" else "'balanced' or 'prior', or rerun its folds"
    return (
        f"this model has no {lacking_words(decision)} (it was calibrated before medsg fitted one): use decision "
        f"{instead}"
    )


def probability_scores(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """ECE, Brier and log loss, with the definitions of ``medsg.metrics`` (what calibration changes)."""
    metrics = classification_metrics(y, probs, class_names)
    return {k: float(metrics[k]) for k in ("ece", "brier", "log_loss")}


def fold_calibration(
    val_y: np.ndarray | None,
    val_probs: np.ndarray | None,
    class_names: Sequence[str],
    no_val_reason: str,
    source: str = "inner validation split at the selected epoch",
) -> dict[str, Any]:
    """A fold's ``calibration.json`` record: T fitted on its validation predictions, or T = 1.0 and why not."""
    if val_y is None or val_probs is None or len(val_y) == 0:
        return {"temperature": 1.0, "fitted": False, "reason": no_val_reason, "n_val": 0}
    temperature = fit_temperature(val_y, val_probs)
    after = apply_temperature(val_probs, temperature)
    note = {}
    if len(val_y) < FEW_VAL:
        note = {"warning": f"fitted on only {len(val_y)} validation images: the temperature is unreliable"}
    return note | {
        "temperature": temperature,
        "fitted": True,
        "fitted_on": source,
        "n_val": int(len(val_y)),
        "val_nll_before": nll(val_y, val_probs),
        "val_nll_after": nll(val_y, after),
    }


def median_temperature(temperatures: Sequence[float]) -> float:
    """The final model's T: the median of the folds' (1.0 when there are none)."""
    return float(np.median(np.asarray(temperatures, dtype=np.float64))) if len(temperatures) else 1.0
