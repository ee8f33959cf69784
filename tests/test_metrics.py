"""Metrics against values worked out by hand on an 8-sample, 3-class example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsg.metrics import (
    HEADLINE,
    _weighted_metrics,
    bootstrap_ci,
    brier_score,
    classification_metrics,
    ece_score,
    summarize_folds,
)

NAMES = ["benign", "malignant", "normal"]
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P = np.array(
    [
        [0.70, 0.20, 0.10],  # y0 pred0 ok   conf .7
        [0.50, 0.30, 0.20],  # y0 pred0 ok   conf .5
        [0.20, 0.70, 0.10],  # y0 pred1 FAIL conf .7
        [0.05, 0.90, 0.05],  # y1 pred1 ok   conf .9
        [0.25, 0.50, 0.25],  # y1 pred1 ok   conf .5
        [0.10, 0.20, 0.70],  # y1 pred2 FAIL conf .7
        [0.20, 0.10, 0.70],  # y2 pred2 ok   conf .7
        [0.05, 0.05, 0.90],  # y2 pred2 ok   conf .9
    ]
)


@pytest.fixture(scope="module")
def metrics():
    return classification_metrics(Y, P, NAMES)


def test_confusion_accuracy_balanced_accuracy(metrics):
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 2]]
    assert metrics["accuracy"] == pytest.approx(6 / 8)
    # recalls 2/3, 2/3, 1
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # F1 = 2TP / (2TP + FP + FN): 4/5, 4/6, 4/5
    assert metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0.8) / 3)


def test_per_class_by_hand(metrics):
    pc = metrics["per_class"]
    assert [pc[n]["sensitivity"] for n in NAMES] == pytest.approx([2 / 3, 2 / 3, 1.0])
    # negatives: 5, 5, 6; false positives: 0, 1, 1
    assert [pc[n]["specificity"] for n in NAMES] == pytest.approx([1.0, 4 / 5, 5 / 6])
    assert [pc[n]["precision"] for n in NAMES] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert [pc[n]["f1"] for n in NAMES] == pytest.approx([0.8, 2 / 3, 0.8])
    assert [pc[n]["support"] for n in NAMES] == [3, 3, 2]


def test_auroc_by_counting_pairs(metrics):
    # class 0: pos .7 .5 .2 vs neg .05 .25 .1 .2 .05 -> 5 + 5 + 3.5 (one tie) = 13.5 / 15
    # class 1: pos .9 .5 .2 vs neg .2 .3 .7 .1 .05   -> 5 + 4 + 2.5 (one tie) = 11.5 / 15
    # class 2: pos .7 .9    vs neg .1 .2 .1 .05 .25 .7 -> 5.5 + 6 = 11.5 / 12
    expected = [13.5 / 15, 11.5 / 15, 11.5 / 12]
    assert [metrics["per_class"][n]["auroc"] for n in NAMES] == pytest.approx(expected)
    assert metrics["macro_auroc"] == pytest.approx(np.mean(expected))
    assert metrics["macro_auroc"] == pytest.approx(0.875)
    assert metrics["macro_auroc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))


def test_calibration_by_hand(metrics):
    # bins: conf .5 -> {1, 4} acc 1  gap .5; conf .7 -> {0, 2, 5, 6} acc .5 gap .2; conf .9 -> {3, 7} gap .1
    assert metrics["ece"] == pytest.approx(2 / 8 * 0.5 + 4 / 8 * 0.2 + 2 / 8 * 0.1)
    assert metrics["ece"] == pytest.approx(0.25)
    # per-sample sum (p - onehot)^2: .14 .38 1.14 .015 .375 1.14 .14 .015
    assert metrics["brier"] == pytest.approx(3.345 / 8)
    assert brier_score(Y, P) == pytest.approx(0.418125)
    # -mean log p_true with p_true = .7 .5 .2 .9 .5 .2 .7 .9
    assert metrics["log_loss"] == pytest.approx(-np.log(0.7 * 0.5 * 0.2 * 0.9) / 4)


def test_ece_bins_are_right_closed():
    # conf 0.4 sits on the 6/15 edge: it must share a bin with 0.35 (5/15, 6/15], not with 0.45.
    y = np.array([0, 1, 0])
    p = np.array([[0.4, 0.3, 0.3], [0.35, 0.33, 0.32], [0.45, 0.3, 0.25]])
    # bin (1/3, 0.4]: {0.4 correct, 0.35 wrong}: |1 - 0.75| * 2; bin (0.4, 7/15]: {0.45 correct}: .55
    assert ece_score(y, p) == pytest.approx((2 * abs(0.5 - 0.375) + 0.55) / 3)


def test_json_serialisable(metrics):
    json.dumps(metrics, allow_nan=False)
    assert metrics["notes"] == []


def test_absent_class_gives_null_and_is_excluded():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(y, p, NAMES)
    json.dumps(m, allow_nan=False)
    absent = m["per_class"]["normal"]
    assert absent["auroc"] is None and absent["sensitivity"] is None and absent["support"] == 0
    assert absent["specificity"] == pytest.approx(3 / 4)  # sample 1 predicted "normal"
    auc0 = roc_auc_score([1, 1, 0, 0], p[:, 0])
    auc1 = roc_auc_score([0, 0, 1, 1], p[:, 1])
    assert m["macro_auroc"] == pytest.approx((auc0 + auc1) / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert any("normal" in note for note in m["notes"])


def test_single_class_fold_has_null_macro_auroc():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8, 0.0], [0.5, 0.4, 0.1]]), NAMES)
    assert m["macro_auroc"] is None
    assert m["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (P[:, :2], "shape"),
        (P * 2, "sum to 1|within"),
        (np.c_[P[:, :2], P[:, 2] + 0.1], "sum to 1"),
        (np.where(P == 0.7, np.nan, P), "finite"),
    ],
)
def test_invalid_probs_raise(probs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(Y, probs, NAMES)


def test_invalid_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 0, 0, 1, 1, 1, 2, 3]), P, NAMES)
    with pytest.raises(ValueError, match="y_true must have shape"):
        classification_metrics(Y[:-1], P, NAMES)


def _synthetic(n=300, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


def test_vectorised_metrics_match_direct_ones():
    y, p = _synthetic()
    idx = np.random.default_rng(5).integers(0, len(y), len(y))
    counts = np.bincount(idx, minlength=len(y)).astype(float)[None, :]
    fast = _weighted_metrics(y, p, counts)
    direct = classification_metrics(y[idx], p[idx], NAMES)
    for key in HEADLINE:
        assert fast[key][0] == pytest.approx(direct[key], abs=1e-9), key
    hand = _weighted_metrics(Y, P, np.ones((1, len(Y))))  # tied scores in the hand example
    assert hand["macro_auroc"][0] == pytest.approx(0.875)
    assert hand["ece"][0] == pytest.approx(0.25)


def test_bootstrap_reproducible_and_brackets_point():
    y, p = _synthetic()
    a = bootstrap_ci(y, p, NAMES, n_resamples=300, seed=3)
    b = bootstrap_ci(y, p, NAMES, n_resamples=300, seed=3)
    c = bootstrap_ci(y, p, NAMES, n_resamples=300, seed=4)
    assert a == b
    assert a["accuracy"]["low"] != c["accuracy"]["low"] or a["brier"]["high"] != c["brier"]["high"]
    full = classification_metrics(y, p, NAMES)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece", "brier"):
        assert a[key]["low"] < a[key]["high"], key
        assert a[key]["low"] <= full[key] <= a[key]["high"], key
        assert a[key]["point"] == pytest.approx(full[key]), key
    json.dumps(a, allow_nan=False)


def test_bootstrap_stratified_keeps_class_counts():
    y, p = _synthetic(n=60)
    s = bootstrap_ci(y, p, NAMES, n_resamples=50, seed=0, stratified=True)
    assert s["macro_auroc"]["n_valid"] == 50
    assert s["_settings"]["stratified"] is True


def test_summarize_folds_mean_sd():
    folds = [
        {"accuracy": 0.8, "macro_auroc": 0.9},
        {"accuracy": 0.7, "macro_auroc": None},
        {"accuracy": 0.6, "macro_auroc": 0.7},
    ]
    s = summarize_folds(folds)
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["sd"] == pytest.approx(0.1)  # ddof=1
    assert s["macro_auroc"]["mean"] == pytest.approx(0.8)
    assert s["macro_auroc"]["n_folds"] == 2
    assert s["ece"]["mean"] is None and s["ece"]["n_folds"] == 0
