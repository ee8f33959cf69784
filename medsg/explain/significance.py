"""Significance maps: what each hybrid SG-Former block hands to the next (guided) block.

The maps are the mean attention each token receives (local 7x7 windows plus global strided
attention), shape (B, H, W) on that stage's token grid. The model records them only while
``significance_recorder`` is a dict, so a plain forward pays nothing.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["find_sgformer", "significance_maps"]


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
