"""``medsg bench pipeline``: the training data pipeline's images/s, cached and not, against training images/s."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsg.bench.measure import benchmarked_model, device_words, format_table, model_throughput
from medsg.core.device import torch_device


def benchmark_pipeline(
    adapter: str,
    root: str | Path,
    n_images: int | None = None,
    img_size: int = 224,
    batch_size: int = 8,
    epochs: int = 2,
    num_workers: Sequence[int] = (0, 2),
    cache: str = "memory",
) -> dict[str, Any]:
    """Training-pipeline throughput (images/s) per epoch and worker count, the cache filled first.

    The pipeline is the training one: the dataset's augmentation defaults, ImageNet mean/std, masks left out.
    With ``cache="memory"`` each epoch does augmentation only (the fill is timed apart, ``cache_fill_s``);
    the steady-state figure is the last epoch.
    """
    from monai.data import DataLoader

    from medsg.data.dataset import build_dataset, manifest_to_records
    from medsg.data.manifest import load_manifest
    from medsg.data.transforms import aug_defaults, build_transforms, resolve_augmentations

    df = load_manifest(adapter, root)
    if n_images:
        df = df.sample(n=min(n_images, len(df)), random_state=0)
    transform = build_transforms(
        img_size,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        train=True,
        color_aug=aug_defaults(adapter)["color_aug"],
        with_mask=False,
        augment=resolve_augmentations(None, adapter),
    )
    records = manifest_to_records(df, with_masks=False)
    t0 = time.perf_counter()
    dataset = build_dataset(records, transform, cache=cache, num_workers=max(num_workers))
    result: dict[str, Any] = {
        "adapter": adapter,
        "n_images": len(df),
        "img_size": img_size,
        "batch_size": batch_size,
        "cache": cache,
        "cache_fill_s": round(time.perf_counter() - t0, 2),
        "images_per_s": {},
    }
    for workers in num_workers:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
        rates = []
        for _ in range(epochs):
            start = time.perf_counter()
            n = sum(len(batch["label"]) for batch in loader)
            rates.append(round(n / (time.perf_counter() - start), 1))
        result["images_per_s"][f"workers={workers}"] = rates
    return result


def run_pipeline(args: argparse.Namespace) -> int:
    device = torch_device(args.device)
    settings = {"n_images": args.limit, "img_size": args.img_size, "batch_size": args.batch_size}
    settings |= {"epochs": args.epochs, "num_workers": args.workers}
    runs = [benchmark_pipeline(args.adapter, args.root, cache=cache, **settings) for cache in args.cache]
    model = benchmarked_model(args.model, img_size=args.img_size).to(device)
    train_rate = model_throughput(
        model, args.batch_size, args.img_size, steps=args.steps, device=device, amp=args.amp
    )
    print(
        f"Data pipeline: {runs[0]['n_images']} {args.adapter} images, {args.img_size} px, batch "
        f"{args.batch_size}, last of {args.epochs} epoch(s); {args.model} trains {train_rate:.2f} img/s on "
        f"{device_words(device)} (goal: pipeline >= 5x training)"
    )
    rows = []
    for run in runs:
        fill = f"{run['cache_fill_s']:.2f}" if run["cache"] != "none" else "-"
        for workers, rates in run["images_per_s"].items():
            rate = rates[-1]
            rows.append(
                [run["cache"], workers.split("=")[1], fill, f"{rate:.1f}", f"{rate / train_rate:.1f}x"]
            )
    print(format_table(["cache", "workers", "cache fill s", "img/s", "x training"], rows))
    return 0
