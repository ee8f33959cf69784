"""Explanation material of a fold: SG-Former significance maps of a few test cases, saved beside its predictions.

``fold_K/significance.npz`` is the raw material that the report's overlays render. Cases are chosen
stratified by class and deterministically: classes take turns in class order (0, 1, 2, 0, 1, ...) and each
class gives its ids in sorted order, so every class of the test fold shows up and a rerun picks the same cases.
Arrays: ``ids`` (N,) str, ``labels`` (N,) int, ``probs`` (N, C), ``class_names`` (C,) str, ``images`` (N,H,W,3)
uint8 (the model input, un-normalised, at model resolution) and one (N,h,w) float32 array per hybrid block,
named as ``medsg.explain.significance_maps`` names it (e.g. ``block1.0``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medsg.explain import find_sgformer, significance_maps
from medsg.io import atomic_write_bytes
from medsg.train.loader import plain_tensor

log = logging.getLogger(__name__)

SIGNIFICANCE_FILE = "significance.npz"


def pick_cases(ids: Sequence[str], labels: Sequence[int], n: int) -> list[int]:
    """Positions of up to ``n`` cases: classes take turns (ascending label), sorted ids within each class."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for pos, (case_id, label) in enumerate(zip(ids, labels, strict=True)):
        by_class.setdefault(int(label), []).append((str(case_id), pos))
    queues = [sorted(by_class[c]) for c in sorted(by_class)]
    picked: list[int] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picked.extend(q[rank][1] for q in queues if rank < len(q))
    return picked[: max(n, 0)]


def to_uint8_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(N,3,H,W) normalised float -> (N,H,W,3) uint8, undoing ``(x - mean) / std`` on the 0..1 scale."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    pixels = (images.cpu() * s + m).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def significance_arrays(model: nn.Module, images: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """{block name: (N,h,w) float32} of ``medsg.explain.significance_maps``, in eval mode, ``batch_size`` at a time."""

    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), max(batch_size, 1)):
        for name, value in significance_maps(model, images[start : start + batch_size]).items():
            parts.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(chunks).numpy() for name, chunks in parts.items()}


def export_significance(
    model: nn.Module,
    dataset: Dataset,
    predictions: tuple[list[str], np.ndarray, np.ndarray],
    class_names: Sequence[str],
    n: int,
    path: Path,
    device: torch.device,
    batch_size: int,
) -> Path | None:
    """Write ``path`` for up to ``n`` cases of ``dataset``; None when ``n`` is 0 or the model has no maps.

    ``predictions`` is ``medsg.train.evaluate.predict``'s (ids, y_true, probs) of ``dataset`` in dataset order.
    The images are read again from ``dataset`` (the deterministic test transform) and un-normalised with the
    model's mean/std, the ones its data pipeline normalised with.
    """
    import timm

    if n <= 0:
        return None
    if find_sgformer(model) is None:
        log.info("%s has no significance maps (not an SG-Former): no %s", type(model).__name__, path.name)
        return None
    ids, labels, probs = predictions
    picked = pick_cases(ids, labels, n)
    samples = [dataset[i] for i in picked]
    got = [str(s["id"]) for s in samples]
    if got != [ids[i] for i in picked]:
        raise RuntimeError(f"test dataset order changed between prediction and explanation: {got[:3]}...")
    images = torch.stack([plain_tensor(s["image"]) for s in samples]).float().to(device)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    arrays: dict[str, np.ndarray] = {
        "ids": np.array(got, dtype=str),
        "labels": np.asarray(labels)[picked].astype(np.int64),
        "probs": np.asarray(probs)[picked],
        "class_names": np.array(list(class_names), dtype=str),
        "images": to_uint8_images(images, data_cfg["mean"], data_cfg["std"]),
        **significance_arrays(model, images, batch_size),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())
