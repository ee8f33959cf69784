"""Which torch device a config or a command means: one rule for ``train.device`` and every ``--device``."""

from __future__ import annotations

import torch

from medsg.core.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error the user can fix."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA GPU is visible; use auto or cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def torch_device(name: str) -> torch.device:
    """A command's ``--device``: ``auto``, ``cpu`` or ``cuda`` as ``resolve_device`` (CUDA without a GPU is a
    user error), or an indexed ``cuda:N``, which ``resolve_device`` (a config's train.device) does not take."""
    if name in ("auto", "cpu", "cuda"):
        return resolve_device(name)
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ConfigError(f"--device {name}: no such CUDA GPU is visible; use auto or cpu")
    return device
