"""Significance maps: what each hybrid SG-Former block hands to the next (guided) block.

The maps are the mean attention each token receives (local 7x7 windows plus global strided
attention), shape (B, H, W) on that stage's token grid. The model records them only while
``significance_recorder`` is a dict, so a plain forward pays nothing.

Three views of the same recording, each at the model input's resolution after ``upsample``:

* per block (``block1.0``, ``block3.2``, ...): exactly what the model computed;
* per stage (``stage1``, ``stage2``, ``stage3``): the mean of that stage's block maps on its token grid;
* fused (``significance``): every stage map upsampled bilinearly to the input size and min-max normalised
  per image, then averaged with equal weight per stage. Each stage sees the image at another scale (strides
  4, 8, 16), so no scale dominates because it has more blocks or larger raw values.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "find_sgformer",
    "significance_maps",
    "stage_maps",
    "fused_map",
    "upsample",
    "minmax",
]

_BLOCK_NAME = re.compile(r"^block(\d+)\.(\d+)$")


def find_sgformer(model: nn.Module) -> nn.Module | None:
    """The SG-Former backbone inside ``model`` (itself, or wrapped by DDP, EMA, ...), or None if there is none."""
    return next((m for m in model.modules() if hasattr(m, "significance_recorder")), None)


def significance_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` and return {"block1.0": (B, H, W), ...} for every hybrid block.

    The forward runs under ``torch.no_grad()``: the maps are detached by design, so building an autograd
    graph would only cost memory. The caller chooses the mode; use ``model.eval()`` (dropout and drop-path
    off) so the maps describe the deterministic prediction. The mode is not changed here. The recorder is
    removed again even on error, and no hooks are installed.
    """
    backbone = find_sgformer(model)
    if backbone is None:
        raise TypeError(f"{type(model).__name__} contains no SG-Former backbone (no significance_recorder).")
    if backbone.significance_recorder is not None:
        raise RuntimeError("significance_maps is already recording on this model (nested call?).")
    recorded: dict[str, torch.Tensor] = {}
    backbone.significance_recorder = recorded
    try:
        with torch.no_grad():
            model(x)
    finally:
        backbone.significance_recorder = None
    return recorded


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of (B, H, W) maps to [0, 1]; a constant map becomes all ones (uniform)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    span = high - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 1.0)
    return scaled.view_as(maps)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) token-grid maps -> (B, H, W) by bilinear interpolation (token centres, no corner alignment)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _stage_of(name: str) -> int:
    match = _BLOCK_NAME.match(name)
    if match is None:
        raise ValueError(f"not a block map name: {name!r} (expected 'block<stage>.<index>')")
    return int(match.group(1))


def stage_maps(block_maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"stage1": (B, h, w), ...}: the mean of each stage's block maps, on that stage's token grid."""
    by_stage: dict[int, list[torch.Tensor]] = {}
    for name, value in block_maps.items():
        by_stage.setdefault(_stage_of(name), []).append(value)
    return {f"stage{s}": torch.stack(v).mean(0) for s, v in sorted(by_stage.items())}


def fused_map(block_maps: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) in [0, 1]: the mean over stages of each stage map, upsampled to ``size`` and min-max scaled."""
    stages = stage_maps(block_maps)
    if not stages:
        raise ValueError("no significance maps to fuse")
    return torch.stack([minmax(upsample(m, size)) for m in stages.values()]).mean(0)
