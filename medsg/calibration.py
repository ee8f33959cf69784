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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

VAL_PREDICTIONS = "val_predictions.csv"  # a fold's inner validation probabilities at the selected epoch
CALIBRATION_FILE = "calibration.json"  # a fold's temperature and its before/after scores
CALIBRATED_PREDICTIONS = "calibrated_predictions.csv"  # a fold's test predictions after its temperature
BETA_BOUNDS = (0.05, 20.0)  # inverse temperature 1/T searched in [1/20, 20]
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


def fit_temperature(y: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """The T that minimises the NLL of ``softmax(log p / T)`` on (y, probs).

    The NLL is convex in the inverse temperature beta = 1/T (a log-sum-exp minus a linear term), so a bounded
    scalar search finds the one minimum; it is deterministic and needs no learning rate.
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    z = log_probs(probs)
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on zero predictions")
    true = z[np.arange(len(y)), y]

    def loss(beta: float) -> float:
        scaled = beta * z
        top = scaled.max(axis=1)
        lse = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float((lse - beta * true).mean())

    result = minimize_scalar(loss, bounds=BETA_BOUNDS, method="bounded", options={"xatol": 1e-7})
    return float(1.0 / result.x)


def probability_scores(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """ECE, Brier and log loss, with the definitions of ``medsg.metrics`` (what calibration changes)."""
    from medsg.metrics import classification_metrics

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
