"""Benchmarks that print ratios, never pass/fail on time.

``python -m medsg.bench pipeline --root ../shared/data/busi`` compares the cached training pipeline's images/s with
sgformer_s training images/s on the same machine (the data must never be the bottleneck: goal >= 5x).
``python -m medsg.bench model [--reference DIR]`` measures sgformer_s train and eval throughput, and, given a
checkout of the reference implementation, the reference's too, interleaved in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

import medsg  # noqa: F401  (registers the SG-Former variants)
from medsg.data.dataset import benchmark_pipeline


def _images_per_second(step: Callable[[], None], images_per_step: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return images_per_step * steps / (time.perf_counter() - start)


def model_throughput(
    model: nn.Module,
    batch_size: int = 8,
    img_size: int = 224,
    train: bool = True,
    steps: int = 3,
    warmup: int = 1,
) -> float:
    """Images/s of one model: a forward, backward and AdamW step when ``train``, a no-grad forward otherwise."""
    x = torch.randn(batch_size, 3, img_size, img_size)
    if not train:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(x)

        return _images_per_second(step, batch_size, steps, warmup)

    model.train()
    target = torch.randint(0, 3, (batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()

    return _images_per_second(step, batch_size, steps, warmup)


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


def compare_models(
    models: dict[str, nn.Module], batch_size: int = 8, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Median train and eval images/s per model, measured in interleaved rounds so load drifts hit all alike."""
    samples: dict[str, dict[str, list[float]]] = {name: {"train": [], "eval": []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name]["train"].append(model_throughput(model, batch_size, train=True))
            samples[name]["eval"].append(model_throughput(model, batch_size, train=False))
    return {
        name: {mode: statistics.median(v) for mode, v in modes.items()} for name, modes in samples.items()
    }


def _report(title: str, rows: dict[str, float]) -> None:
    print(title)
    for name, value in rows.items():
        print(f"  {name:<34s} {value:10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsg.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    model_parser = sub.add_parser(
        "model", help="sgformer_s train/eval throughput, optionally vs the reference"
    )
    model_parser.add_argument(
        "--reference", help="a local checkout of OliverRensu/SG-Former (never committed)"
    )
    model_parser.add_argument("--variant", default="sgformer_s")
    model_parser.add_argument("--batch-size", type=int, default=8)
    model_parser.add_argument("--rounds", type=int, default=3)
    pipe_parser = sub.add_parser("pipeline", help="cached pipeline images/s vs sgformer_s training images/s")
    pipe_parser.add_argument("--root", required=True)
    pipe_parser.add_argument("--adapter", default="busi")
    pipe_parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    pipe_parser.add_argument("--limit", type=int, help="use a random subset of this many images")
    pipe_parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.what == "model":
        models = {"medsg": timm.create_model(args.variant, num_classes=1000)}
        if args.reference:
            models["reference"] = load_reference_model(args.reference, args.variant)
            models["reference"].load_state_dict(models["medsg"].state_dict())
        result = compare_models(models, args.batch_size, args.rounds)
        for mode in ("train", "eval"):
            _report(
                f"{args.variant} {mode} images/s, batch {args.batch_size}",
                {k: v[mode] for k, v in result.items()},
            )
            if "reference" in result:
                print(f"  ratio medsg/reference: {result['medsg'][mode] / result['reference'][mode]:.2f}x")
        return 0

    pipeline = benchmark_pipeline(
        args.adapter, args.root, batch_size=args.batch_size, num_workers=args.workers, n_images=args.limit
    )
    train_rate = model_throughput(timm.create_model("sgformer_s", num_classes=3), args.batch_size, train=True)
    rows = {f"cached pipeline ({k}), last epoch": v[-1] for k, v in pipeline["images_per_s"].items()}
    _report(
        f"images/s on {pipeline['n_images']} {args.adapter} images",
        {**rows, "sgformer_s training": train_rate},
    )
    print(f"  cache fill: {pipeline['cache_fill_s']} s")
    print(f"  ratio pipeline/training: {max(rows.values()) / train_rate:.1f}x (goal >= 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
