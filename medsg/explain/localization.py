"""Scores of an explanation map against a lesion mask: pointing game, energy in mask, Otsu IoU, deletion AUC.

Definitions (written down so that maps, runs and papers can be compared):

- Inputs: a map ``saliency`` (H, W) and a binary lesion ``mask`` (H, W) of the same size; the caller resizes,
  nothing here does. A mask is bool or 0/1. An empty mask (a normal image) has no lesion to find, so every
  score raises ValueError on it; the caller excludes such images and counts them.
- Normalisation: every map is min-max normalised per image, ``(s - min) / (max - min)``, before it is scored,
  so a score depends on the map's shape, not on its scale or offset (Grad-CAM and attention maps live on
  different scales). A constant map (max == min) has no shape and becomes all ones: the uniform map. A NaN
  or infinite value raises ValueError: a broken map must not score as a flat one.
- Pointing game (Zhang et al. 2018): 1 if the map's maximum lies in the lesion, 0 if not. Ties: when several
  pixels share the maximum (exact equality of the input values), the score is the fraction of them inside
  the lesion, the expected hit rate of a random pick among them; so a uniform map scores the lesion's share
  of the image area. ``tolerance`` (pixels, default 0) also counts a peak within that Euclidean distance of
  the lesion as a hit (Zhang et al. use 15 px).
- Energy in mask: the share of the normalised (hence non-negative) map's mass inside the lesion,
  ``sum(s * mask) / sum(s)``. A uniform map's energy is the lesion's share of the image area. The map's
  minimum carries no mass after normalisation.
- Otsu IoU: the normalised map is quantised to 256 levels, ``round(255 * s)``, and thresholded with Otsu's
  method as OpenCV implements it (``cv2.threshold`` with ``THRESH_OTSU``; the lowest of equally good
  thresholds). The region is the pixels strictly above the threshold, so a two-level map splits into its
  high level (region) and its low level. IoU = |region & lesion| / |region | lesion|. A uniform map has no
  threshold: its region is the whole image and its IoU is |lesion| / |image|.
- Deletion AUC (Petsiuk et al. 2018, RISE): see ``deletion_curve``. Lower is better.
- Baselines a map must beat: ``uniform_map``, ``centre_gaussian_map``, ``random_map``.

``summarise_scores`` turns per-image scores into means with CIs that resample groups (patients), through the
project's one bootstrap, ``medsg.metrics.grouped_bootstrap_ci``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike

from medsg.metrics import grouped_bootstrap_ci

__all__ = [
    "DEFINITIONS",
    "METRICS",
    "centre_gaussian_map",
    "deletion_auc",
    "deletion_curve",
    "deletion_order",
    "energy_in_mask",
    "normalise",
    "otsu_iou",
    "otsu_region",
    "pointing_game",
    "random_map",
    "score_map",
    "summarise_scores",
    "uniform_map",
]

METRICS = ("pointing", "energy", "iou", "deletion_auc")
# One sentence per score, for reports (the module docstring has the full definitions and ties).
DEFINITIONS = {
    "pointing": "pointing game: 1 if the map's peak lies inside the lesion, else 0; tied peaks score the share "
    "inside, so a uniform map scores the lesion's share of the image (higher is better)",
    "energy": "energy in mask: the share of the min-max normalised map's mass inside the lesion; a uniform map "
    "scores the lesion's share of the image (higher is better)",
    "iou": "Otsu IoU: IoU of the map thresholded at Otsu's threshold with the lesion; a uniform map has no "
    "threshold, so its region is the whole image (higher is better)",
    "deletion_auc": "deletion AUC: area under the predicted-class probability as the most salient pixels are set "
    "to the mean colour, in equal steps from 0 to 100 % of the image (lower is better)",
}
PredictFn = Callable[[torch.Tensor], Any]


def normalise(saliency: ArrayLike) -> np.ndarray:
    """Min-max normalise a 2-D map to [0, 1] (float64); a constant map becomes all ones (uniform)."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"saliency must be a non-empty 2-D (H, W) map, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("saliency holds NaN or infinite values; a broken map cannot be scored")
    low, high = s.min(), s.max()
    if high == low:
        return np.ones_like(s)
    return (s - low) / (high - low)


def pointing_game(saliency: ArrayLike, mask: ArrayLike, tolerance: float = 0.0) -> float:
    """1.0 if the map's peak is in the lesion, 0.0 if not; tied peaks score the fraction inside it."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    s, _, m = _prepare(saliency, mask)
    peaks = s == s.max()  # on the input values: normalising could merge distinct near-maximal values
    if tolerance > 0:
        # distance of every pixel to the nearest lesion pixel (0 inside), exact Euclidean
        distance = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        m = distance <= tolerance
    return float(m[peaks].mean())


def energy_in_mask(saliency: ArrayLike, mask: ArrayLike) -> float:
    """Share of the normalised map's mass inside the lesion (uniform map: the lesion's area share)."""
    _, s, m = _prepare(saliency, mask)
    return float(s[m].sum() / s.sum())  # s.max() == 1 after normalisation, so the sum is positive


def otsu_iou(saliency: ArrayLike, mask: ArrayLike) -> float:
    """IoU of the map's Otsu region (8-bit levels strictly above the threshold) with the lesion."""
    _, s, m = _prepare(saliency, mask)
    region = otsu_region(s)
    return float((region & m).sum() / (region | m).sum())


def otsu_region(normalised: np.ndarray) -> np.ndarray:
    """Boolean region of a normalised map: OpenCV's Otsu on round(255 * s), pixels strictly above it."""
    if normalised.min() == normalised.max():
        return np.ones(normalised.shape, dtype=bool)  # uniform: no threshold, the whole image
    levels = np.rint(normalised * 255).astype(np.uint8)
    threshold, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return levels > threshold


def score_map(saliency: ArrayLike, mask: ArrayLike, tolerance: float = 0.0) -> dict[str, float]:
    """{"pointing", "energy", "iou"} of one map against one non-empty lesion mask (definitions above)."""
    return {
        "pointing": pointing_game(saliency, mask, tolerance),
        "energy": energy_in_mask(saliency, mask),
        "iou": otsu_iou(saliency, mask),
    }


def deletion_order(saliency: ArrayLike, seed: int = 0) -> np.ndarray:
    """Flat pixel indices from most to least salient; ties in a seeded random order (uniform map: random)."""
    s = np.asarray(saliency, dtype=np.float64)
    normalise(s)  # validation only: the order depends on the ranking, which normalising keeps
    perm = np.random.default_rng(seed).permutation(s.size)
    return perm[np.argsort(-s.ravel()[perm], kind="stable")]


def deletion_curve(
    predict_fn: PredictFn,
    image: ArrayLike | torch.Tensor,
    saliency: ArrayLike,
    target: int,
    steps: int = 20,
    fill: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(deleted fraction, target-class probability) at fractions 0, 1/steps, ..., 1 (Petsiuk et al. 2018).

    ``image`` is the (C, H, W) normalised model input and ``saliency`` an (H, W) map at the same size. Step k
    removes the ``floor(k * H * W / steps)`` most salient pixels (order: ``deletion_order``), setting them to
    ``fill`` in every channel; the default 0.0 in normalised space is the dataset's mean colour, i.e. "no
    information" rather than black. ``predict_fn`` maps a (K, C, H, W) tensor on the image's device to
    (K, num_classes) probabilities (numpy or torch); it runs under ``torch.no_grad()`` in batches of
    ``batch_size`` images, so the ``steps + 1`` inputs cost ``ceil((steps + 1) / batch_size)`` calls.
    """
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)) if isinstance(image, np.ndarray) else image
    x = torch.as_tensor(x).detach()
    if x.ndim != 3:
        raise ValueError(f"image must be one (C, H, W) input, got shape {tuple(x.shape)}")
    s = np.asarray(saliency, dtype=np.float64)
    if s.shape != tuple(x.shape[-2:]):
        raise ValueError(f"saliency {s.shape} must match the image's (H, W) {tuple(x.shape[-2:])}; resize it")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    n_pixels = s.size
    rank = np.empty(n_pixels, dtype=np.int64)
    rank[deletion_order(s, seed)] = np.arange(n_pixels)
    rank_t = torch.from_numpy(rank.reshape(s.shape)).to(x.device)
    n_deleted = torch.from_numpy(np.arange(steps + 1) * n_pixels // steps).to(x.device)
    fill_t = torch.tensor(fill, dtype=x.dtype, device=x.device)
    probs = []
    with torch.no_grad():
        for start in range(0, steps + 1, batch_size):
            deleted = rank_t[None] < n_deleted[start : start + batch_size, None, None]  # (K, H, W)
            batch = torch.where(deleted[:, None], fill_t, x[None])
            p = _as_numpy(predict_fn(batch))
            if p.ndim != 2 or p.shape[0] != len(batch) or not 0 <= target < p.shape[1]:
                raise ValueError(
                    f"predict_fn must return (K, num_classes) probabilities with target {target} a class "
                    f"index; for {len(batch)} inputs it returned shape {p.shape}"
                )
            probs.append(p[:, target])
    return np.arange(steps + 1) / steps, np.concatenate(probs)


def deletion_auc(
    predict_fn: PredictFn,
    image: ArrayLike | torch.Tensor,
    saliency: ArrayLike,
    target: int,
    steps: int = 20,
    fill: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> float:
    """Trapezoidal area under ``deletion_curve``, in [0, 1] for probabilities; lower = the map found what the
    model uses (deleting its top pixels makes the target probability fall fast)."""
    fractions, probs = deletion_curve(predict_fn, image, saliency, target, steps, fill, seed, batch_size)
    return float(np.trapezoid(probs, fractions))


def uniform_map(shape: Sequence[int]) -> np.ndarray:
    """All ones (H, W) float32: the map that knows nothing."""
    return np.ones(_shape(shape), dtype=np.float32)


def centre_gaussian_map(shape: Sequence[int], sigma: float = 0.25) -> np.ndarray:
    """Gaussian centred on the image centre, float32 (H, W): the "lesions sit in the middle" prior.

    Isotropic in relative coordinates: pixel centres are placed at ((i + 0.5) / H - 0.5, (j + 0.5) / W - 0.5)
    and ``sigma`` is a fraction of each side, so on a non-square image it stretches with the image. The map
    is exactly symmetric under vertical and horizontal flips; its peak is the centre pixel (the central 2 x 2
    pixels, tied, for even sizes).
    """
    h, w = _shape(shape)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 (a fraction of the side), got {sigma}")
    u = (2 * np.arange(h) + 1 - h) / (2 * h)  # integer numerators: u[i] == -u[h - 1 - i] exactly
    v = (2 * np.arange(w) + 1 - w) / (2 * w)
    return np.exp(-(u[:, None] ** 2 + v[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def random_map(shape: Sequence[int], seed: int) -> np.ndarray:
    """IID uniform [0, 1) noise (H, W) float32 from ``np.random.default_rng(seed)``: chance-level map."""
    return np.random.default_rng(seed).random(_shape(shape), dtype=np.float32)


def summarise_scores(
    frame: pd.DataFrame,
    group_col: str = "group",
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per map type: mean of each score with a percentile CI that resamples groups (patients).

    Input: one row per (case_id, map_type) with ``group_col``, pointing, energy, iou and optionally
    deletion_auc. Output (wide), rows in order of first appearance of the map type: ``map_type``,
    ``n_cases`` and ``n_groups`` (rows and distinct groups of that map type), then for each metric
    ``<metric>``, ``<metric>_low``, ``<metric>_high`` and ``<metric>_n`` (cases with a value: NaN scores, e.g.
    deletion AUC skipped for a map, are left out, see ``grouped_bootstrap_ci``). A metric with no value at all
    (deletion_auc absent or all NaN) has no columns. Every map type uses the same ``seed``, so map types
    scored on the same cases are resampled with the same group draws (paired intervals).
    """
    required = ["case_id", "map_type", group_col, "pointing", "energy", "iou"]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"scores frame lacks columns {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError("scores frame is empty: no case was scored")
    if frame[group_col].isna().any():
        raise ValueError(f"column {group_col!r} has missing values: give every case a group")
    if frame.duplicated(["case_id", "map_type"]).any():
        raise ValueError("scores frame has several rows for one (case_id, map_type); expected one")
    if (frame.groupby("case_id")[group_col].nunique() > 1).any():
        raise ValueError(f"a case_id appears with several {group_col!r} values; a case has one group")
    metrics = [m for m in METRICS if m in frame.columns and frame[m].notna().any()]
    rows = []
    for map_type in pd.unique(frame["map_type"]):
        part = frame[frame["map_type"] == map_type]
        groups = part[group_col].to_numpy()
        row: dict[str, Any] = {
            "map_type": map_type,
            "n_cases": len(part),
            "n_groups": part[group_col].nunique(),
        }
        for metric in metrics:
            ci = grouped_bootstrap_ci(
                part[metric].to_numpy(dtype=np.float64), groups, n_resamples, seed, alpha
            )
            row |= {metric: ci["point"], f"{metric}_low": ci["low"], f"{metric}_high": ci["high"]}
            row[f"{metric}_n"] = ci["n"]
        rows.append(row)
    return pd.DataFrame(rows)


def _prepare(saliency: ArrayLike, mask: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map as float64, normalised map, mask as bool), after checking shapes and that a lesion exists."""
    s = np.asarray(saliency, dtype=np.float64)
    normalised = normalise(s)
    m = np.asarray(mask)
    if m.shape != s.shape:
        raise ValueError(f"mask {m.shape} and saliency {s.shape} must have the same size; resize the map")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask must be binary (bool or 0/1); threshold it first")
        m = m.astype(bool)
    if not m.any():
        raise ValueError("mask is empty (no lesion): the image cannot be scored; exclude and count it")
    return s, normalised, m


def _shape(shape: Sequence[int]) -> tuple[int, int]:
    dims = tuple(int(d) for d in shape)
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"shape must be (H, W) with positive sides, got {tuple(shape)}")
    return dims[0], dims[1]


def _as_numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu().numpy()
    return np.asarray(out, dtype=np.float64)
