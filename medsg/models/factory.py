"""The one place a model is built by name: timm's registry, with SG-Former registered."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

import medsg.models.sgformer  # noqa: F401 - registers sgformer_s/m/b/tiny in timm's registry


def create_model(name: str, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with ``img_size`` passed only to models that take it (ViTs, SG-Former): training,
    packages, pretraining and benchmarks all build their models here."""
    if img_size is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(
        name, **kwargs
    )  # outside the handler: its own errors are not chained to this one
