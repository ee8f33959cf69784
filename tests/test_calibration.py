"""Temperature scaling: the fit lowers the NLL of a miscalibrated model, never changes a prediction, and a fold
without validation data stays uncalibrated and says so."""

from __future__ import annotations

import numpy as np
import pytest

from medsg.calibration import (
    apply_temperature,
    fit_temperature,
    fold_calibration,
    log_probs,
    median_temperature,
    nll,
)
from medsg.metrics import calibration_cis


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def toy(n: int = 2000, sharpen: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (a calibrated model), and an overconfident model: softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, 4))
    true = softmax(z)
    y = np.array([rng.choice(4, p=p) for p in true])
    return y, true, softmax(sharpen * z)


def test_temperature_fit_lowers_the_nll_of_an_overconfident_toy():
    y, calibrated, overconfident = toy()
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)  # the sharpening undone
    fixed = apply_temperature(overconfident, t)
    assert nll(y, fixed) < nll(y, overconfident) - 0.1
    assert nll(y, fixed) == pytest.approx(nll(y, calibrated), abs=0.01)
    # an underconfident model is sharpened instead (T < 1)
    y2, _, under = toy(sharpen=0.5, seed=1)
    assert fit_temperature(y2, under) == pytest.approx(0.5, rel=0.1)


def test_temperature_keeps_predictions_and_equals_scaling_the_logits():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, 3))
    p = softmax(z)
    for t in (0.3, 1.0, 2.5):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q, softmax(z / t), atol=1e-12)  # softmax(log p / T) == softmax(z / T)
        assert (q.argmax(1) == p.argmax(1)).all()
        np.testing.assert_allclose(q.sum(1), 1.0)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    # a probability rounded to 0 in float32 stays finite
    assert np.isfinite(log_probs(np.array([[1.0, 0.0, 0.0]]))).all()
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


def test_fold_without_validation_keeps_t_1_and_says_why():
    record = fold_calibration(None, None, ["a", "b"], "no inner validation split (last_epoch)")
    assert record == {
        "temperature": 1.0,
        "fitted": False,
        "reason": "no inner validation split (last_epoch)",
        "n_val": 0,
    }
    y, _, over = toy(n=300)
    fitted = fold_calibration(y, over, list("abcd"), "unused")
    assert fitted["fitted"] and fitted["n_val"] == 300 and fitted["val_nll_after"] < fitted["val_nll_before"]
    assert median_temperature([2.0, 1.0, 4.0]) == 2.0 and median_temperature([]) == 1.0


def test_calibration_cis_are_paired_and_show_the_improvement():
    y, _, over = toy(n=600)
    fixed = apply_temperature(over, fit_temperature(y, over))
    out = calibration_cis(y, over, fixed, list("abcd"), n_resamples=200, seed=0)
    for key in ("ece", "brier", "log_loss"):
        before, after = out["before"][key], out["after"][key]
        assert before["low"] <= before["point"] <= before["high"]
        assert after["point"] < before["point"]
    assert out["_settings"]["paired"] and out["_settings"]["n_resamples"] == 200
