"""The model of a fold: any timm model by name, from a local pretrained file or from scratch."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from medsg.config import Config


def create_timm_model(name: str, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with ``img_size`` passed only to models that take it (ViTs, SG-Former): the one
    place training, packages and benchmarks build a model by name."""
    import medsg.models  # noqa: F401 - registers the SG-Former variants

    if img_size is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **kwargs)


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The config's model: from a local pretrained file when ``model.pretrained`` names one, else from scratch."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": cfg.model.drop_path}
    if cfg.model.pretrained:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cfg.model.pretrained})
    return create_timm_model(cfg.model.name, cfg.model.img_size, **kwargs)
