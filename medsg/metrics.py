"""Classification metrics for one fold, fold summaries and bootstrap CIs on pooled out-of-fold predictions.

Definitions (so reports can be compared with papers):

- Predicted class: ``argmax`` of the probabilities (ties go to the lowest class index).
- ECE: 15 equal-width bins on the max probability (confidence), bin m = (m/15, (m+1)/15] (a confidence
  of exactly 0 falls in the first bin); ``ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|`` (Guo et al. 2017).
- Brier: multiclass form ``mean_i sum_c (p_ic - 1[y_i = c])^2``, range [0, 2] (not divided by C).
- Log loss: ``sklearn.metrics.log_loss`` with ``labels=range(C)`` (probabilities clipped to [eps, 1-eps]).
- A class absent from ``y_true`` (possible in small folds): its sensitivity and AUROC are undefined and
  reported as ``None`` (JSON null); it is left out of balanced accuracy, macro F1 and macro AUROC, which
  average over the classes present in ``y_true``, and a note says so. With every class present these are
  the usual sklearn definitions.
- Bootstrap: percentile intervals from count-matrix resamples (``resample_weights``). The resampled unit is
  the image, or with ``groups`` the group (cluster, e.g. patient): a drawn group brings all its images, so
  images of one patient are never treated as independent evidence. The one implementation serves
  ``bootstrap_ci`` (classification) and ``grouped_bootstrap_ci`` (mean of per-image scores).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

N_BINS = 15
PROB_ATOL = 1e-3
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece", "brier", "log_loss")


def validate_inputs(y_true: Any, probs: Any, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return (y, p) as int / float64 arrays, or raise ValueError saying what is wrong with them."""
    n_classes = len(class_names)
    if n_classes < 2:
        raise ValueError(f"class_names must list at least 2 classes, got {list(class_names)!r}")
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (n, {n_classes}) (one column per class), got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true must have shape ({p.shape[0]},) to match probs, got {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("y_true and probs are empty: there are no predictions to score")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite and within [0, 1]; pass softmax probabilities, not logits")
    row_sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(row_sums - 1.0) > PROB_ATOL)
    if bad.size:
        raise ValueError(
            f"probs rows must sum to 1 (tolerance {PROB_ATOL}); {bad.size} rows do not, "
            f"e.g. row {bad[0]} sums to {row_sums[bad[0]]:.6f}. Apply softmax before scoring."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds class indices outside 0..{n_classes - 1}: {sorted(set(y.tolist()))}")
    return y.astype(np.int64), p


def ece_score(y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error with equal-width bins on the max probability (definition in module doc)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    bins = confidence_bins(conf, n_bins)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y_true))


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of sum over classes of (p - onehot)^2."""
    return float(_brier_per_sample(y_true, probs).mean())


def classification_metrics(y_true: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """All fold metrics as a JSON-serialisable dict (undefined values are None, see ``notes``)."""
    y, p = validate_inputs(y_true, probs, class_names)
    n_classes = len(class_names)
    labels = list(range(n_classes))
    present = [c for c in labels if np.any(y == c)]
    y_pred = p.argmax(axis=1)
    cm = confusion_matrix(y, y_pred, labels=labels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes are handled explicitly below
        prec, rec, f1, _ = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=np.nan)
        bal_acc = balanced_accuracy_score(y, y_pred)
        macro_f1 = f1_score(y, y_pred, labels=present, average="macro", zero_division=0)
    negatives = cm.sum() - cm.sum(axis=1)
    true_neg = negatives - (cm.sum(axis=0) - np.diag(cm))
    aurocs = [_binary_auroc(y == c, p[:, c]) for c in labels]

    notes = []
    absent = [class_names[c] for c in labels if c not in present]
    if absent:
        notes.append(
            f"classes absent from y_true: {absent}; their sensitivity and AUROC are null and they are "
            "excluded from balanced accuracy, macro F1 and macro AUROC"
        )
    defined = [a for a in aurocs if not math.isnan(a)]
    per_class = {
        name: {
            "support": int(cm[c].sum()),
            "sensitivity": _clean(rec[c]),
            "specificity": _clean(true_neg[c] / negatives[c] if negatives[c] else math.nan),
            "precision": _clean(prec[c]),
            "f1": _clean(f1[c]),
            "auroc": _clean(aurocs[c]),
        }
        for c, name in enumerate(class_names)
    }
    return {
        "n": int(len(y)),
        "class_names": list(class_names),
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": float(bal_acc),
        "macro_f1": float(macro_f1),
        "macro_auroc": _clean(float(np.mean(defined)) if defined else math.nan),
        "ece": ece_score(y, p),
        "brier": brier_score(y, p),
        "log_loss": float(log_loss(y, p, labels=labels)),
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "notes": notes,
    }


def summarize_folds(per_fold_metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and SD (ddof=1) over folds of each headline metric; None values (undefined) are skipped."""
    out = {}
    for key in HEADLINE:
        values = [m.get(key) for m in per_fold_metrics]
        arr = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        ok = arr[~np.isnan(arr)]
        out[key] = {
            "mean": _clean(float(ok.mean()) if ok.size else math.nan),
            "sd": _clean(float(ok.std(ddof=1)) if ok.size > 1 else math.nan),
            "n_folds": int(ok.size),
            "values": [_clean(v) for v in arr.tolist()],
        }
    return out


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = False,
    groups: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Percentile bootstrap CIs of the headline metrics on pooled out-of-fold predictions.

    Each resample is expressed as a count vector over the samples, so every metric is a matrix product
    (1000 resamples of ~1000 samples take well under a second). ``mean`` is the mean of the bootstrap
    distribution, ``point`` the metric on the full data. ``stratified`` resamples within each true class.
    ``groups`` (one label per sample, e.g. patient id) resamples whole groups instead of images, because
    images of one patient are correlated and an image bootstrap would give too narrow intervals; with
    ``stratified`` every group must then hold a single class. ``groups=None`` is the image bootstrap, with
    the same numbers for a given seed as before groups existed.
    """
    y, p = validate_inputs(y_true, probs, class_names)
    _check_resampling(n_resamples, alpha)
    rng = np.random.default_rng(seed)
    if groups is None:
        weights = _resample_counts(y, n_resamples, rng, stratified)
        n_groups = None
    else:
        codes = _group_codes(groups, len(y))
        n_groups = int(codes.max()) + 1
        weights = resample_weights(n_resamples, groups=codes, seed=rng, strata=y if stratified else None)
    boot = _weighted_metrics(y, p, weights)
    point = _weighted_metrics(y, p, np.ones((1, len(y))))
    out = {}
    for key, values in boot.items():
        ok, low, high = _percentile_interval(values, alpha)
        out[key] = {
            "mean": _clean(float(ok.mean()) if ok.size else math.nan),
            "low": _clean(float(low)),
            "high": _clean(float(high)),
            "point": _clean(float(point[key][0])),
            "n_valid": int(ok.size),
        }
    out["_settings"] = {
        "n_resamples": n_resamples,
        "seed": seed,
        "alpha": alpha,
        "stratified": stratified,
        "method": "percentile",
        "unit": "image" if n_groups is None else "group",
        "groups": n_groups,
    }
    return out


def sensitivity_cis(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-class sensitivity (recall of the argmax) with percentile bootstrap CIs, images or ``groups`` resampled.

    A clinician reads the sensitivity of each class first (how many malignant lesions are missed), so it gets
    an interval like the headline metrics; resamples without a member of a class do not count for its CI, and
    a class that no resample holds gets None bounds.
    """
    y, p = validate_inputs(y_true, probs, class_names)
    weights = resample_weights(n_resamples, groups=groups, n=len(y), seed=seed)
    hit = p.argmax(axis=1) == y
    out = {}
    for c, name in enumerate(class_names):
        member = y == c
        if not member.any():
            out[name] = {"point": None, "low": None, "high": None, "support": 0}
            continue
        total = weights @ member.astype(np.float64)
        ok = total > 0
        _, low, high = _percentile_interval(
            (weights[ok] @ (member & hit).astype(np.float64)) / total[ok], alpha
        )
        out[name] = {
            "point": float(hit[member].mean()),
            "low": _clean(low),
            "high": _clean(high),
            "support": int(member.sum()),
        }
    return out


PAIRED_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "log_loss")


def paired_differences(
    y_true: Any,
    probs_a: Any,
    probs_b: Any,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """B minus A in the headline metrics on the same images, with paired percentile bootstrap CIs.

    Both models are scored on the same resample (one ``resample_weights`` matrix, groups drawn whole), so
    the CI of the difference keeps the pairing: images that are hard for both cancel out.
    """
    y, pa = validate_inputs(y_true, probs_a, class_names)
    _, pb = validate_inputs(y_true, probs_b, class_names)
    weights = resample_weights(n_resamples, groups=groups, n=len(y), seed=seed)
    ones = np.ones((1, len(y)))
    boot_a, boot_b = _weighted_metrics(y, pa, weights), _weighted_metrics(y, pb, weights)
    point_a, point_b = _weighted_metrics(y, pa, ones), _weighted_metrics(y, pb, ones)
    out = {}
    for key in PAIRED_KEYS:
        ok, low, high = _percentile_interval(boot_b[key] - boot_a[key], alpha)
        out[key] = {
            "a": _clean(float(point_a[key][0])),
            "b": _clean(float(point_b[key][0])),
            "difference": _clean(float(point_b[key][0] - point_a[key][0])),
            "low": _clean(float(low)),
            "high": _clean(float(high)),
            "n_valid": int(ok.size),
        }
    return out


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> dict[str, Any]:
    """McNemar's exact test on paired per-image correctness: a two-sided binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    p_value = 1.0 if n == 0 else float(binomtest(only_b, n, 0.5).pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p_value}


CALIBRATION_KEYS = ("ece", "brier", "log_loss")


def calibration_cis(
    y_true: Any,
    probs_before: Any,
    probs_after: Any,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """ECE, Brier and log loss before and after calibration, each with its percentile bootstrap CI.

    Both calls use the same seed and so the same resamples (paired): the two intervals come from the same
    draws of images or groups, and differ only by the probabilities.
    """
    before = bootstrap_ci(y_true, probs_before, class_names, n_resamples, seed, alpha, groups=groups)
    after = bootstrap_ci(y_true, probs_after, class_names, n_resamples, seed, alpha, groups=groups)
    return {
        "before": {k: before[k] for k in CALIBRATION_KEYS},
        "after": {k: after[k] for k in CALIBRATION_KEYS},
        "_settings": before["_settings"] | {"paired": True},
    }


def grouped_bootstrap_ci(
    values: ArrayLike,
    groups: ArrayLike | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Percentile bootstrap CI of the mean of per-image ``values``, resampling ``groups`` (or images if None).

    For scores that exist per image (localisation, deletion AUC): the mean is a weighted mean under each
    row of ``resample_weights``, so 1000 resamples of ~650 images are one matrix product. NaN values
    (images that could not be scored) are dropped first, as if absent: the point estimate is the mean of
    the rest, only groups with at least one valid image are resampled, and ``n`` / ``n_groups`` count what
    was used. No valid value gives NaN estimates with ``n == 0``. ``point`` is the mean on the data,
    ``mean`` the mean of the bootstrap distribution; ``unit`` is "image" or "group".
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be one-dimensional (one score per image), got shape {v.shape}")
    if np.isinf(v).any():
        raise ValueError("values must be finite or NaN (NaN marks an image without a score), got inf")
    _check_resampling(n_resamples, alpha)
    codes = None if groups is None else _group_codes(groups, len(v))
    ok = ~np.isnan(v)
    v = v[ok]
    unit = "image" if codes is None else "group"
    if v.size == 0:
        empty = dict.fromkeys(("point", "low", "high", "mean"), math.nan)
        return empty | {"n": 0, "n_groups": 0, "n_resamples": int(n_resamples), "unit": unit}
    if codes is not None:
        codes = _group_codes(codes[ok], v.size)  # renumber: groups left without a valid value vanish
    weights = resample_weights(n_resamples, groups=codes, n=v.size, seed=seed)
    boot, low, high = _percentile_interval(weights @ v / weights.sum(axis=1), alpha)
    return {
        "point": float(v.mean()),
        "low": float(low),
        "high": float(high),
        "mean": float(boot.mean()),
        "n": int(v.size),
        "n_groups": int(v.size if codes is None else codes.max() + 1),
        "n_resamples": int(n_resamples),
        "unit": unit,
    }


def resample_weights(
    n_resamples: int,
    groups: ArrayLike | None = None,
    n: int | None = None,
    seed: int | np.random.Generator = 0,
    strata: ArrayLike | None = None,
) -> np.ndarray:
    """(n_resamples, n) float matrix: how often each sample is drawn in each bootstrap resample.

    The unit drawn with replacement is the sample, or with ``groups`` (one label per sample) the group: as
    many groups are drawn as there are, and a drawn group brings all its members, so members of a group
    always share one count in a resample. Any statistic that accepts sample weights then works unchanged.
    ``strata`` (one label per sample) draws within each stratum as many units as it holds; with groups,
    every group must lie in one stratum. Groups are numbered by first appearance, so singleton groups give
    exactly the sample bootstrap for the same seed, whatever their labels. ``n`` is needed only when
    neither ``groups`` nor ``strata`` is given (and must match them otherwise).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    sizes = {len(a) for a in (groups, strata) if a is not None} | ({n} if n is not None else set())
    if len(sizes) != 1:
        raise ValueError(f"n, groups and strata disagree on the number of samples (or none given): {sizes}")
    (n,) = sizes
    if n == 0:
        raise ValueError("there are no samples to resample")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    unit_of = np.arange(n) if groups is None else _group_codes(groups, n)
    n_units = int(unit_of.max()) + 1
    if strata is None:
        draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    else:
        s = np.asarray(strata)
        unit_stratum = np.empty(n_units, dtype=s.dtype)
        unit_stratum[unit_of] = s
        if np.any(unit_stratum[unit_of] != s):
            raise ValueError("with strata, every group must lie within one stratum (one class per group)")
        draws = np.concatenate(
            [
                members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
                for members in (np.flatnonzero(unit_stratum == c) for c in np.unique(unit_stratum))
            ],
            axis=1,
        )
    flat = (draws + np.arange(n_resamples)[:, None] * n_units).ravel()  # resample r's unit u -> r * U + u
    counts = np.bincount(flat, minlength=n_resamples * n_units).reshape(n_resamples, n_units)
    if n_units == n:  # every unit is one sample in order (codes follow first appearance): no gather needed
        return counts.astype(np.float64)
    return counts[:, unit_of].astype(np.float64)


def _group_codes(groups: ArrayLike, n: int) -> np.ndarray:
    """Group labels -> codes 0..G-1 in order of first appearance (so relabelling groups changes nothing)."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must hold one label per sample, shape ({n},), got {g.shape}")
    if g.dtype.kind == "f" and np.isnan(g).any() or g.dtype == object and any(x is None for x in g):
        raise ValueError("groups has missing labels (NaN/None): give every sample a group")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    except TypeError as err:
        raise ValueError(f"groups labels must be mutually comparable (one type): {err}") from err
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _resample_counts(
    y: np.ndarray, n_resamples: int, rng: np.random.Generator, stratified: bool
) -> np.ndarray:
    """(n_resamples, n) matrix: how often each sample is drawn in each resample (see ``resample_weights``)."""
    return resample_weights(n_resamples, n=len(y), seed=rng, strata=y if stratified else None)


def _weighted_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Headline metrics for each row of sample weights ``w`` (B, n); same definitions as above.

    A macro metric averages over the classes the data holds. A resample that lost one of them would average
    over fewer classes, another quantity, so its macro values are NaN: it does not count towards the CI
    (``n_valid`` says how many did), instead of pulling the interval towards the remaining classes' mean.
    """
    n_classes = p.shape[1]
    total = w.sum(axis=1)
    y_pred = p.argmax(axis=1)
    correct = (y_pred == y).astype(np.float64)
    cells = np.zeros((len(y), n_classes * n_classes))
    cells[np.arange(len(y)), y * n_classes + y_pred] = 1.0
    cm = (w @ cells).reshape(-1, n_classes, n_classes)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    present = support > 0
    complete = present[:, np.bincount(y, minlength=n_classes) > 0].all(axis=1)  # kept every class of the data
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / support, np.nan)
        f1 = np.where(present, 2 * tp / (support + predicted), np.nan)
        recall[~complete], f1[~complete] = np.nan, np.nan
    conf = p.max(axis=1)
    bins = np.zeros((len(y), N_BINS))
    bins[np.arange(len(y)), confidence_bins(conf, N_BINS)] = correct - conf
    eps = np.finfo(np.float64).eps
    p_true = np.clip(p[np.arange(len(y)), y], eps, 1 - eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the incomplete resamples' all-NaN rows stay NaN
        balanced, macro_f1 = np.nanmean(recall, axis=1), np.nanmean(f1, axis=1)
    return {
        "accuracy": w @ correct / total,
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "macro_auroc": _weighted_macro_auroc(y, p, w),
        "ece": np.abs(w @ bins).sum(axis=1) / total,
        "brier": w @ _brier_per_sample(y, p) / total,
        "log_loss": w @ -np.log(p_true) / total,
    }


def _weighted_macro_auroc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over classes of one-vs-rest AUROC with sample weights (Mann-Whitney, ties count 1/2); NaN for a
    resample in which a class that has an AUROC on the data (positives and negatives) has none."""
    per_class, complete = [], np.ones(len(w), dtype=bool)
    for c in range(p.shape[1]):
        order = np.argsort(p[:, c], kind="stable")
        scores, pos = p[order, c], (y[order] == c).astype(np.float64)
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # tie groups
        w_sorted = w[:, order]
        wp = np.add.reduceat(w_sorted * pos, starts, axis=1)
        wn = np.add.reduceat(w_sorted * (1 - pos), starts, axis=1)
        neg_below = np.cumsum(wn, axis=1) - wn
        pairs = wp.sum(axis=1) * wn.sum(axis=1)
        if 0 < pos.sum() < len(pos):
            complete &= pairs > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(np.where(pairs > 0, (wp * (neg_below + 0.5 * wn)).sum(axis=1) / pairs, np.nan))
    stacked = np.stack(per_class, axis=1)
    stacked[~complete] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(stacked, axis=1)


def _binary_auroc(is_pos: np.ndarray, score: np.ndarray) -> float:
    """One-vs-rest AUROC, NaN when the class is absent (or is every sample)."""
    if is_pos.all() or not is_pos.any():
        return math.nan
    return float(roc_auc_score(is_pos.astype(int), score))


def confidence_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin m holds confidences in (m/n_bins, (m+1)/n_bins]; 0 goes to bin 0."""
    scaled = np.round(conf * n_bins, 9)  # so 0.4 * 15 lands on the 6/15 edge, not just above it
    return np.clip(np.ceil(scaled).astype(np.int64) - 1, 0, n_bins - 1)


def _brier_per_sample(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    onehot = np.eye(p.shape[1])[y]
    return ((p - onehot) ** 2).sum(axis=1)


def _percentile_interval(boot: np.ndarray, alpha: float) -> tuple[np.ndarray, float, float]:
    """(the non-NaN bootstrap values, low, high): the central 1 - ``alpha`` percentile interval of a bootstrap
    distribution; NaN bounds when no resample gave a value (say, a class absent from every resample)."""
    ok = boot[~np.isnan(boot)]
    if not ok.size:
        return ok, math.nan, math.nan
    low, high = np.percentile(ok, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return ok, float(low), float(high)


def _check_resampling(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _clean(value: Any) -> float | None:
    """Float for JSON, None where the value is undefined (NaN)."""
    value = float(value)
    return None if math.isnan(value) else value
