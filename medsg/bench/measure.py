"""Measuring one model: images/s, FLOPs, a matmul's rate, model building (timm or the reference), tables."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import medsg  # noqa: F401  (registers the SG-Former variants)
from medsg.core.errors import ConfigError
from medsg.models import create_model
from medsg.train.utils import amp_dtype, autocast


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_second(
    step: Callable[[], None], images_per_step: int, steps: int, warmup: int, device: torch.device
) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return images_per_step * steps / (time.perf_counter() - start)


def model_throughput(
    model: nn.Module,
    batch_size: int = 8,
    img_size: int = 224,
    train: bool = True,
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> float:
    """Images/s of one model (on ``device`` already): a forward, backward and AdamW step when ``train``, a
    no-grad forward otherwise; ``amp``: bf16 (fp16 where bf16 is missing) autocast on CUDA, as training does."""
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if not train:
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast(device, dtype):
                model(x)

        return _images_per_second(step, batch_size, steps, warmup, device)

    model.train()
    target = torch.zeros(batch_size, dtype=torch.long, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(x)
        nn.functional.cross_entropy(logits.float(), target).backward()
        optimizer.step()

    rate = _images_per_second(step, batch_size, steps, warmup, device)
    model.zero_grad(set_to_none=True)
    return rate


def forward_gflops(model: nn.Module, img_size: int = 224) -> float:
    """GFLOP of one image's forward pass, counted by ``FlopCounterMode`` (matmuls and convolutions, 2 FLOP
    per multiply-add; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    training = model.training
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, img_size, img_size, device=device))
    model.train(training)
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: torch.device, size: int = 2048, min_seconds: float = 0.1) -> float:
    """GFLOP/s of a ``size`` x ``size`` fp32 matmul on ``device``, repeated for at least ``min_seconds``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while reps == 0 or time.perf_counter() - start < min_seconds:
        a @ b
        reps += 1
        sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - start) / 1e9


def load_reference_model(reference_dir: str | Path, variant: str = "sgformer_s", **kwargs) -> nn.Module:
    """Build a model from a local checkout of the reference code, for side-by-side timing only.

    The reference registers the same names in timm's registry; registration is disabled while it is imported so
    medsg's variants stay in place. It also needs ``np.float``, removed in numpy 1.24, which is restored for it.
    """
    import numpy as np
    import timm.models.registry as registry

    reference_dir = Path(reference_dir)
    source = reference_dir / "sgformer.py"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: pass --reference a checkout of OliverRensu/SG-Former")
    sys.path.insert(0, str(reference_dir))
    original_register = registry.register_model
    had_float = hasattr(np, "float")
    try:
        registry.register_model = lambda fn: fn
        if not had_float:
            np.float = float  # type: ignore[attr-defined]
        spec = importlib.util.spec_from_file_location("sgformer_reference", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, variant)(**kwargs)
    finally:
        registry.register_model = original_register
        sys.path.remove(str(reference_dir))
        if not had_float:
            with contextlib.suppress(AttributeError):
                del np.float


def benchmarked_model(
    name: str, num_classes: int = 3, img_size: int = 224, reference: str | None = None
) -> nn.Module:
    """What a benchmark times: ``medsg.models.create_model(name)``, or the reference code.s ``name``."""
    if reference:
        return load_reference_model(reference, name, num_classes=num_classes)
    if not timm.is_model(name):
        raise ConfigError(
            f"{name!r} is not a timm model; see timm.list_models() (SG-Former: sgformer_tiny/xs/s/m/b)"
        )
    return create_model(name, img_size, num_classes=num_classes)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned (the first left, the others right)."""
    cells = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    )


def device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
