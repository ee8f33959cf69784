"""The model of a fold: any timm model by name, from a local pretrained file or from scratch."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from medsg.config import Config


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """A timm model by name; ``img_size`` is passed only to models that take it (e.g. ViTs, SG-Former)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": cfg.model.drop_path}
    if cfg.model.pretrained:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cfg.model.pretrained})
    try:
        return timm.create_model(cfg.model.name, img_size=cfg.model.img_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(cfg.model.name, **kwargs)
