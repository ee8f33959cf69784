"""Metrics against values worked out by hand on an 8-sample, 3-class example."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsg.metrics import (
    HEADLINE,
    _resample_counts,
    _weighted_metrics,
    bootstrap_ci,
    brier_score,
    classification_metrics,
    ece_score,
    grouped_bootstrap_ci,
    resample_weights,
    sensitivity_cis,
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


# Computed with the code before groups existed (commit e77e5bc): groups=None must not move any number.
PINNED = {
    False: {
        "counts": (9003315, 6566),
        "accuracy": (0.7065, 0.7933333333333333, 0.7506166666666667),
        "macro_auroc": (0.8695731952104089, 0.9252781456175276, 0.8987212296003316),
        "brier": (0.3192364308385941, 0.40741452730353034, 0.359632252151995),
    },
    True: {
        "counts": (9002884, 6612),
        "accuracy": (0.6998333333333333, 0.7933333333333333, 0.7487833333333334),
        "macro_auroc": (0.8713516786550551, 0.9249718667210436, 0.8975674218151635),
        "brier": (0.3170059866939793, 0.4021234504431881, 0.36101287637473817),
    },
}


@pytest.mark.parametrize("stratified", [False, True])
def test_bootstrap_without_groups_unchanged_by_grouping(stratified):
    y, p = _synthetic()
    w = _resample_counts(y, 200, np.random.default_rng(7), stratified)
    pinned = PINNED[stratified]
    assert (int((w * np.arange(len(y))).sum()), int((w[:, :17] ** 2).sum())) == pinned["counts"]
    ci = bootstrap_ci(y, p, NAMES, n_resamples=200, seed=7, stratified=stratified)
    for key in ("accuracy", "macro_auroc", "brier"):
        got = (ci[key]["low"], ci[key]["high"], ci[key]["mean"])
        # equal here to the last bit; the tolerance only allows for another BLAS's summation order
        assert got == pytest.approx(pinned[key], rel=1e-12, abs=0), key
    assert ci["_settings"]["unit"] == "image" and ci["_settings"]["groups"] is None


def _clustered(n_groups=40, size=10, seed=0):
    """Values nearly constant within a group and spread between groups, groups in shuffled order."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), size)
    values = rng.normal(size=n_groups)[groups] + 0.01 * rng.normal(size=groups.size)
    order = rng.permutation(groups.size)
    return values[order], np.char.add("patient-", groups[order].astype(str))


def test_resample_weights_draw_whole_groups():
    values, groups = _clustered()
    w = resample_weights(100, groups=groups, seed=1)
    assert w.shape == (100, values.size)
    for g in np.unique(groups):
        members = w[:, groups == g]
        assert np.all(members == members[:, :1]), g  # one count per group and resample
    per_group = np.stack([w[:, groups == g][:, 0] for g in np.unique(groups)], axis=1)
    assert np.all(per_group.sum(axis=1) == 40)  # as many groups drawn as there are
    assert np.all(w.sum(axis=1) == values.size)  # equal group sizes: every resample holds 400 images
    plain = resample_weights(100, n=values.size, seed=1)
    assert np.all(plain.sum(axis=1) == values.size)


def test_resample_weights_uneven_group_sizes_and_reproducible():
    groups = np.array(["b", "b", "b", "a", "c", "c"])
    w = resample_weights(500, groups=groups, seed=3)
    assert np.array_equal(w, resample_weights(500, groups=groups, seed=3))
    assert not np.array_equal(w, resample_weights(500, groups=groups, seed=4))
    assert np.all(w[:, 0] == w[:, 2]) and np.all(w[:, 4] == w[:, 5])
    assert w.sum(axis=1).std() > 0  # unequal group sizes: the number of images drawn varies
    # group counts over resamples average to 1 each
    assert w[:, [0, 3, 4]].mean(axis=0) == pytest.approx([1, 1, 1], abs=0.15)


def test_singleton_groups_are_the_image_bootstrap_exactly():
    values = np.random.default_rng(0).normal(size=50)
    labels = np.array([f"id{k}" for k in np.random.default_rng(1).permutation(50)])  # unsorted labels
    assert np.array_equal(resample_weights(300, groups=labels, seed=5), resample_weights(300, n=50, seed=5))
    assert grouped_bootstrap_ci(values, labels, seed=5) == grouped_bootstrap_ci(values, seed=5) | {
        "unit": "group"
    }
    y, p = _synthetic(n=60)
    a = bootstrap_ci(y, p, NAMES, n_resamples=100, seed=2)
    b = bootstrap_ci(y, p, NAMES, n_resamples=100, seed=2, groups=np.arange(60)[::-1])
    assert b.pop("_settings") == a.pop("_settings") | {"unit": "group", "groups": 60}
    assert a == b


def test_cluster_ci_wider_than_image_ci_on_clustered_data():
    values, groups = _clustered()
    image = grouped_bootstrap_ci(values, n_resamples=1000, seed=0)
    cluster = grouped_bootstrap_ci(values, groups, n_resamples=1000, seed=0)
    assert image["unit"] == "image" and cluster["unit"] == "group"
    assert (image["n"], image["n_groups"]) == (400, 400)
    assert (cluster["n"], cluster["n_groups"]) == (400, 40)
    assert cluster["point"] == image["point"] == pytest.approx(values.mean())
    # ten near-copies per group: the honest interval is about sqrt(10) times wider
    assert cluster["high"] - cluster["low"] > 2.5 * (image["high"] - image["low"])
    for ci in (image, cluster):
        assert ci["low"] < ci["point"] < ci["high"]


def test_grouped_bootstrap_reproducible_and_groups_none_is_image():
    values, groups = _clustered(seed=2)
    a = grouped_bootstrap_ci(values, groups, n_resamples=200, seed=9)
    assert a == grouped_bootstrap_ci(values, groups, n_resamples=200, seed=9)
    assert a != grouped_bootstrap_ci(values, groups, n_resamples=200, seed=10)
    image = grouped_bootstrap_ci(values, None, n_resamples=200, seed=9)
    w = resample_weights(200, n=values.size, seed=9)
    boot = w @ values / w.sum(axis=1)
    assert image["low"] == pytest.approx(np.percentile(boot, 2.5))
    assert image["mean"] == pytest.approx(boot.mean())


def test_grouped_bootstrap_ignores_nan():
    values, groups = _clustered(n_groups=10, size=3, seed=4)
    holed = values.copy()
    holed[[0, 5, 6]] = np.nan
    ok = ~np.isnan(holed)
    assert grouped_bootstrap_ci(holed, groups, seed=1) == grouped_bootstrap_ci(values[ok], groups[ok], seed=1)
    # a group whose every value is NaN vanishes from n_groups
    whole = groups == groups[0]
    holed[whole] = np.nan
    ci = grouped_bootstrap_ci(holed, groups, seed=1)
    assert (ci["n"], ci["n_groups"]) == (int((~np.isnan(holed)).sum()), 9)
    assert np.isfinite([ci["low"], ci["high"]]).all()
    empty = grouped_bootstrap_ci([np.nan, np.nan], ["a", "b"])
    assert empty["n"] == 0 and np.isnan(empty["point"])


def test_grouped_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="one label per sample"):
        grouped_bootstrap_ci([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="missing"):
        grouped_bootstrap_ci([1.0, 2.0], ["a", None])
    with pytest.raises(ValueError, match="inf"):
        grouped_bootstrap_ci([1.0, np.inf])
    y, p = _synthetic(n=30)
    with pytest.raises(ValueError, match="one stratum"):
        bootstrap_ci(y, p, NAMES, n_resamples=10, stratified=True, groups=np.arange(30) // 10)


def test_bootstrap_ci_with_groups_records_unit_and_widens():
    y, p = _synthetic(n=60)
    groups = np.arange(60) // 6
    y_c, p_c = np.repeat(y[:10], 6), np.repeat(p[:10], 6, axis=0)  # 10 patients, 6 identical images each
    image = bootstrap_ci(y_c, p_c, NAMES, n_resamples=300, seed=0)
    cluster = bootstrap_ci(y_c, p_c, NAMES, n_resamples=300, seed=0, groups=groups)
    assert cluster["_settings"]["unit"] == "group" and cluster["_settings"]["groups"] == 10
    width = {ci["_settings"]["unit"]: ci["brier"]["high"] - ci["brier"]["low"] for ci in (image, cluster)}
    assert width["group"] > 1.5 * width["image"]
    assert cluster["brier"]["point"] == image["brier"]["point"]


def test_sensitivity_cis_points_are_per_class_recall_inside_their_intervals():
    from sklearn.metrics import recall_score

    out = sensitivity_cis(Y, P, NAMES, n_resamples=500, seed=3)
    recall = recall_score(Y, P.argmax(axis=1), average=None, labels=[0, 1, 2])
    for c, name in enumerate(NAMES):
        assert out[name]["point"] == pytest.approx(recall[c])
        assert out[name]["low"] <= out[name]["point"] <= out[name]["high"]
        assert out[name]["support"] == int(np.bincount(Y)[c])


def test_sensitivity_cis_gives_none_bounds_when_no_resample_holds_the_class():
    y = np.array([0] * 9 + [1])
    p = np.tile([0.9, 0.1], (10, 1))
    # a seed whose single resample leaves out the one class-1 image (found, then checked, not assumed)
    seed = next(s for s in range(100) if resample_weights(1, n=10, seed=s)[0, 9] == 0)
    out = sensitivity_cis(y, p, ["a", "b"], n_resamples=1, seed=seed)
    assert out["b"] == {"point": 0.0, "low": None, "high": None, "support": 1}
    assert out["a"]["low"] == out["a"]["high"] == 1.0


def test_a_resample_that_loses_a_class_does_not_count_for_the_macro_cis():
    """34 images of class a, all wrong; 1 of class b, right: balanced accuracy 0.5. About a third of the
    resamples lose b; averaging over a alone there (0.0) would put the CI at [0, 0.5], below a point it
    cannot go under."""
    y = np.r_[np.zeros(34, dtype=int), 1]
    p = np.tile([0.2, 0.8], (35, 1))
    ci = bootstrap_ci(y, p, ["a", "b"], n_resamples=500, seed=0)
    for key in ("balanced_accuracy", "macro_f1", "macro_auroc"):
        assert ci[key]["low"] <= ci[key]["point"] <= ci[key]["high"], key
        assert 200 < ci[key]["n_valid"] < 450, key  # the resamples without b are left out, and counted
    assert ci["balanced_accuracy"]["low"] == 0.5
    assert ci["accuracy"]["n_valid"] == 500  # accuracy is defined on every resample


def test_macro_auroc_of_a_resample_without_a_rare_class_does_not_count():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, dtype=int), np.ones(20, dtype=int), 2]
    p = rng.dirichlet([1, 1, 1], size=len(y))
    p[-1] = [0.9, 0.05, 0.05]  # the one c image ranks lowest for c: its one-vs-rest AUROC is low
    ci = bootstrap_ci(y, p, ["a", "b", "c"], n_resamples=400, seed=1)["macro_auroc"]
    assert 100 < ci["n_valid"] < 350  # resamples without c (~37%) are left out
