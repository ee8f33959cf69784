"""What the training images looked like: the reference that ``predict`` and ``evaluate`` compare new images to.

Two records, computed once per run (``medsg export`` ships them in the package):

* **image statistics** (``training_images.json``): the range of width, height, channels (1 when the decoded
  RGB channels are equal everywhere, as in grey-scale ultrasound, else 3), grey-level mean and standard
  deviation, chroma (mean absolute difference between the RGB channels and their mean: 0 for grey images,
  high for dermoscopy) and the distance of each image's 16-bin grey histogram to the training mean histogram
  (total variation, 0..1). Pixels come from the pipelines' own reader. Grey levels are measured on a 64x64
  box-filtered thumbnail, in 0..255 units. ``ood_reasons`` flags an image that falls *far* outside: a side
  more than ``SIZE_FACTOR`` times smaller or larger than any training image's, a channel count never seen, a
  mean / std / chroma beyond the training range widened by ``RANGE_MARGIN`` of its width (at least
  ``MIN_MARGIN`` grey levels), or a histogram farther from the training mean histogram than any training image
  was, plus ``HIST_MARGIN`` (total variation: the share of pixel mass that must move).
* **fingerprints** (``training_fingerprints.npz``): each training image's SHA-256 of bytes and of pixels, its
  256-bit dHash and its 32x32 grey thumbnail, made by ``medsg.data.audit.inspect_file``, so ``evaluate`` can
  find exact and near duplicates of the training data in a test set with the audit's own rules
  (``medsg.data.audit.near_duplicate_pairs``), even where the training images are not at hand.

What these checks do not catch is in the README (Predicting on new images).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medsg.core.errors import DataError
from medsg.core.io import atomic_write_bytes, atomic_write_text
from medsg.data.audit import inspect_file, near_duplicate_pairs

log = logging.getLogger(__name__)

STATS_FILE = "training_images.json"
FINGERPRINTS_FILE = "training_fingerprints.npz"
SIZE_FACTOR = 4.0
RANGE_MARGIN = 0.1
MIN_MARGIN = 3.0
HIST_MARGIN = 0.1
HIST_BINS = 16
THUMB = 64
SCALARS = ("mean", "std", "chroma")


def read_pixels(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels, read as the model's pipeline reads them; unreadable: an exception."""
    try:
        from medsg.data.images import read_image
    except ImportError:  # a medsg without medsg.data.images: its pipelines read with Pillow
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    return read_image(path)


def image_stats(pixels: np.ndarray) -> dict[str, Any]:
    """Size, channels and grey-level statistics of one decoded (H, W, 3) uint8 image (see the module doc)."""
    height, width = pixels.shape[:2]
    grey_image = bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
    small = np.asarray(Image.fromarray(pixels).resize((THUMB, THUMB), Image.BOX), dtype=np.float64)
    grey = small.mean(axis=2)
    chroma = np.abs(small - grey[..., None]).mean()
    hist = np.histogram(grey, bins=HIST_BINS, range=(0.0, 256.0))[0].astype(np.float64)
    return {
        "width": int(width),
        "height": int(height),
        "channels": 1 if grey_image else 3,
        "mean": float(grey.mean()),
        "std": float(grey.std()),
        "chroma": float(chroma),
        "hist": (hist / hist.sum()).tolist(),
    }


def read_image_stats(path: str | Path) -> dict[str, Any]:
    """``image_stats`` of a file; an unreadable file raises (callers name and skip it)."""
    return image_stats(read_pixels(path))


def _tv(hist: Sequence[float], mean_hist: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(hist, dtype=np.float64) - mean_hist).sum())


def summarise_stats(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The training range of every statistic: what ``ood_reasons`` compares against."""
    if not stats:
        raise DataError("no readable training image to describe; check the run's manifest.csv paths")
    mean_hist = np.mean([s["hist"] for s in stats], axis=0)
    distances = [_tv(s["hist"], mean_hist) for s in stats]
    out: dict[str, Any] = {
        "n_images": len(stats),
        "width": [min(s["width"] for s in stats), max(s["width"] for s in stats)],
        "height": [min(s["height"] for s in stats), max(s["height"] for s in stats)],
        "channels": sorted({int(s["channels"]) for s in stats}),
        "mean_hist": mean_hist.tolist(),
        "hist_distance_max": max(distances),
        "rules": {
            "size_factor": SIZE_FACTOR,
            "range_margin": RANGE_MARGIN,
            "min_margin": MIN_MARGIN,
            "hist_margin": HIST_MARGIN,
            "thumbnail": THUMB,
            "hist_bins": HIST_BINS,
        },
    }
    for key in SCALARS:
        values = [s[key] for s in stats]
        out[key] = [min(values), max(values)]
    return out


def ood_reasons(stats: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Why an image's statistics lie far outside the training range (empty: nothing unusual)."""
    reasons = []
    for side in ("width", "height"):
        low, high = reference[side]
        if stats[side] < low / SIZE_FACTOR or stats[side] > high * SIZE_FACTOR:
            reasons.append(f"{side} {stats[side]} px far outside training {low}-{high}")
    if stats["channels"] not in reference["channels"]:
        reasons.append(f"{stats['channels']} channel(s), training had {reference['channels']}")
    for key in SCALARS:
        low, high = reference[key]
        margin = max(RANGE_MARGIN * (high - low), MIN_MARGIN)
        if not low - margin <= stats[key] <= high + margin:
            reasons.append(f"grey {key} {stats[key]:.1f} outside training {low:.1f}-{high:.1f}")
    distance = _tv(stats["hist"], np.asarray(reference["mean_hist"]))
    if distance > reference["hist_distance_max"] + HIST_MARGIN:
        reasons.append(
            f"intensity histogram distance {distance:.2f} > training max {reference['hist_distance_max']:.2f} "
            f"+ {HIST_MARGIN}"
        )
    return reasons


@dataclass
class Fingerprints:
    """The audit's fingerprints of a set of images, as arrays (one row per image)."""

    ids: np.ndarray  # str
    sha256: np.ndarray  # str, '' when unreadable
    pixel_sha256: np.ndarray  # str
    dhash: np.ndarray  # (n, 32) uint8
    thumb: np.ndarray  # (n, 1024) uint8

    def to_bytes(self) -> bytes:
        """An ``.npz`` that ``np.load`` reads, made small enough to ship with a package of 6 000 images.

        The two SHA-256 columns are stored as 32-byte digests instead of 64-character strings, and every member
        is LZMA-compressed (zip's own method 14) instead of deflated: 5.8 MB -> 4.6 MB for ISIC's 5 984 images,
        most of it the thumbnails.
        """
        arrays = {k: getattr(self, k) for k in self.__dataclass_fields__}
        arrays |= {k: _digests(arrays[k]) for k in _DIGESTS}
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Fingerprints:
        """Either layout: digests as bytes (``to_bytes``) or as hex strings (packages exported before it)."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in cls.__dataclass_fields__}
        arrays |= {k: _hex(arrays[k]) for k in _DIGESTS}
        return cls(**arrays)


_DIGESTS = ("sha256", "pixel_sha256")


def _digests(hexes: np.ndarray) -> np.ndarray:
    """(n,) hex SHA-256 strings -> (n, 32) uint8; an empty string (unreadable image) -> 32 zero bytes."""
    rows = [bytes.fromhex(str(h)) if str(h) else bytes(32) for h in hexes]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), 32)


def _hex(digests: np.ndarray) -> np.ndarray:
    """The inverse of ``_digests``; hex strings (an older file) pass through."""
    if digests.dtype.kind == "U":
        return digests
    return np.array([row.tobytes().hex() if row.any() else "" for row in digests], dtype=str)


def fingerprint(ids: Sequence[str], paths: Sequence[str]) -> tuple[Fingerprints, list[dict[str, Any]]]:
    """Fingerprints of readable images and the audit's problem record of the others."""
    rows, problems = [], []
    for image_id, path in zip(ids, paths, strict=True):
        info = inspect_file(path)
        if info["problem"]:
            problems.append({"id": str(image_id), "path": str(path), "problem": info["problem"]})
            continue
        rows.append((str(image_id), info))
    return _stack(rows), problems


def _stack(rows: Sequence[tuple[str, dict[str, Any]]]) -> Fingerprints:
    return Fingerprints(
        ids=np.array([r[0] for r in rows], dtype=str),
        sha256=np.array([r[1]["sha256"] for r in rows], dtype=str),
        pixel_sha256=np.array([r[1]["pixel_sha256"] for r in rows], dtype=str),
        dhash=np.stack([np.frombuffer(bytes.fromhex(r[1]["dhash"]), np.uint8) for r in rows])
        if rows
        else np.zeros((0, 32), np.uint8),
        thumb=np.stack([r[1]["thumb"].astype(np.uint8) for r in rows])
        if rows
        else np.zeros((0, 1024), np.uint8),
    )


def write_reference(ids: Sequence[str], paths: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """Describe the training images once: ``training_images.json`` and ``training_fingerprints.npz``."""
    prints, problems = fingerprint(ids, paths)
    stats = []
    for path in paths:
        try:
            stats.append(read_image_stats(path))
        except (OSError, ValueError) as exc:  # DataError (unreadable) is a ValueError
            log.warning("reference: cannot read %s (%s)", path, exc)
    summary = summarise_stats(stats) | {"unreadable": problems}
    atomic_write_text(Path(out_dir) / STATS_FILE, json.dumps(summary, indent=1) + "\n")
    atomic_write_bytes(Path(out_dir) / FINGERPRINTS_FILE, prints.to_bytes())
    return summary


def overlap(
    test: Fingerprints, train: Fingerprints, near_dup_threshold: int, min_correlation: float
) -> list[dict[str, Any]]:
    """Test images that duplicate a training image: same bytes, same pixels, or near (the audit's rule).

    One row per overlapping test id, with the strongest kind (exact > pixel > near) and the training ids it
    matches under that kind.
    """
    found: dict[str, dict[str, Any]] = {}
    for kind, key in (("exact", "sha256"), ("pixel", "pixel_sha256")):
        index: dict[str, list[str]] = {}
        for train_id, value in zip(train.ids, getattr(train, key), strict=True):
            index.setdefault(str(value), []).append(str(train_id))
        for test_id, value in zip(test.ids, getattr(test, key), strict=True):
            if str(value) in index and str(test_id) not in found:
                found[str(test_id)] = {"id": str(test_id), "kind": kind, "train_ids": index[str(value)]}
    n = len(train.ids)
    if n and len(test.ids):
        dh = np.concatenate([train.dhash, test.dhash])
        th = np.concatenate([train.thumb, test.thumb]).astype(np.float32)
        near: dict[str, list[str]] = {}
        for a, b, _, _ in near_duplicate_pairs(dh, th, near_dup_threshold, min_correlation):
            if a < n <= b:
                near.setdefault(str(test.ids[b - n]), []).append(str(train.ids[a]))
        for test_id, train_ids in near.items():
            found.setdefault(test_id, {"id": test_id, "kind": "near", "train_ids": sorted(train_ids)})
    return sorted(found.values(), key=lambda r: r["id"])


def overlapping_ids(rows: Iterable[dict[str, Any]]) -> set[str]:
    """The test ids named by ``overlap``."""
    return {r["id"] for r in rows}
