"""Seeds, RNG states, devices and mixed precision: the small pieces that make runs repeatable and resumable."""

from __future__ import annotations

import hashlib
import os
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 31-bit seed from (seed, fold, epoch, ...): the same inputs always give the same stream."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels (warn where none exists).

    Deterministic mode also makes torch fill every new uninitialised tensor with NaN, a debugging aid that
    does not change any result of correct code but cost about a tenth of a CPU training step (one fill per
    ``torch.empty``); it is turned off. A non-deterministic run lets cuDNN time its kernels once per input shape
    (``cudnn.benchmark``): training sees one fixed size, so the choice pays for itself; it has no effect on CPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def get_rng_states() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, stored in every checkpoint for an exact resume."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore states captured by ``get_rng_states`` (CUDA only where a GPU is visible)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        # as many as this machine has: a run saved on 8 GPUs resumes on 1 (each epoch reseeds them anyway)
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


def amp_dtype(device: torch.device, enabled: bool, name: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto``: bf16 where the GPU supports it, else fp16 (with a
    GradScaler), fp32 on CPU; a named dtype ("bfloat16", "float16") applies on any device."""
    if not enabled:
        return None
    if name != "auto":
        return getattr(torch, name)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision in ``dtype`` on ``device``, or a no-op for fp32 (``dtype`` None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
