"""Checkpoint files of a fold: RNG states in a ``weights_only``-safe form, and reading checkpoints back.

``checkpoint_last.pt`` holds everything a resume needs (weights, optimizer, scheduler, history, RNG states);
``checkpoint_best.pt`` the same without the optimizer: the selected, deployable weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsg.core.errors import CheckpointError
from medsg.models.checkpoint import read_checkpoint
from medsg.train.utils import get_rng_states, set_rng_states


def numpy_state_to_torch(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's RNG state holds an ndarray; store it as a tensor so ``weights_only=True`` can read it back."""
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    return out


def numpy_state_from_torch(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``numpy_state_to_torch``."""
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    return out


def capture_rng() -> dict[str, Any]:
    """All global RNG states, ready to be saved in a checkpoint."""
    return numpy_state_to_torch(get_rng_states())


def restore_rng(saved: dict[str, Any]) -> None:
    """Set the global RNGs back to a state saved by ``capture_rng``."""
    set_rng_states(numpy_state_from_torch(saved))


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A fold checkpoint, read by ``medsg.models.checkpoint.read_checkpoint`` (the one reader, weights only).

    An unreadable file is a ``CheckpointError`` that says how to recover: delete it and train the fold again.
    """
    try:
        state = read_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} Delete it to restart this fold from scratch.") from exc
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(
            f"{path} is not a medsg fold checkpoint (no 'state_dict'); delete it to restart this fold from scratch"
        )
    return state


def check_checkpoint_matches(state: dict[str, Any], path: Path, arch: str, num_classes: int) -> None:
    """A resume must continue the same model: refuse a checkpoint of another architecture or class count."""
    if state.get("num_classes") != num_classes or state.get("arch") != arch:
        raise CheckpointError(
            f"{path} is for {state.get('arch')} with {state.get('num_classes')} classes, not "
            f"{arch} with {num_classes}; delete the fold folder to start it again"
        )


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of a state dict's names and tensor bytes: equal on DDP ranks that stayed in sync."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
