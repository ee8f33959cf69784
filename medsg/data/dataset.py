"""Manifest rows -> MONAI datasets that decode each image once per run.

``cache="memory"``: ``CacheDataset`` keeps the deterministic prefix of the pipeline (decode, RGB, masks, resize,
scale) in RAM: about 600 KB per 224x224 float image, so 780 BUSI images take ~0.5 GB. ``cache="disk"``:
``PersistentDataset`` writes the same prefix to ``cache_dir`` (keyed by the record and the transform, so a
changed pipeline never reads stale files). ``cache="none"``: plain ``Dataset``, decodes every epoch.

Use ``monai.data.DataLoader`` (or its ``worker_init_fn``) so random transforms differ between workers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose

from medsg.data.manifest import mask_list
from medsg.errors import DataError

CACHE_MODES = ("memory", "disk", "none")


def plain_tensor(x: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` (MONAI's MetaTensor unwrapped) of ``x``."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def manifest_to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per row: ``{"id", "image", "mask": [paths], "label"}`` (the pipeline's input)."""
    return [
        {"id": str(r.id), "image": str(r.path), "mask": mask_list(r.mask_paths), "label": int(r.label)}
        for r in df.itertuples(index=False)
    ]


def build_dataset(
    records: Sequence[dict[str, Any]],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> Dataset:
    """A torch Dataset over ``records``; ``num_workers`` threads fill the memory cache."""
    if cache == "memory":
        return CacheDataset(
            list(records), transform, cache_rate=1.0, num_workers=max(1, num_workers), progress=False
        )
    if cache == "disk":
        if cache_dir is None:
            raise DataError("cache='disk' needs cache_dir (a folder for the decoded images).")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(list(records), transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    if cache == "none":
        return Dataset(list(records), transform)
    raise DataError(f"cache must be one of {CACHE_MODES}, got {cache!r}.")


def benchmark_pipeline(
    adapter: str,
    root: str | Path,
    n_images: int | None = None,
    img_size: int = 224,
    batch_size: int = 8,
    epochs: int = 2,
    num_workers: Sequence[int] = (0, 2),
    color_aug: bool = False,
    cache: str = "memory",
) -> dict[str, Any]:
    """Training-pipeline throughput (images/s) per epoch and worker count, cache filled first.

    Epoch 1 includes nothing but augmentation when ``cache="memory"`` (the cache is filled before timing, and
    reported as ``cache_fill_s``); the steady-state figure is the last epoch.
    """
    from monai.data import DataLoader

    from medsg.data.manifest import load_manifest
    from medsg.data.transforms import build_transforms

    df = load_manifest(adapter, root)
    if n_images:
        df = df.sample(n=min(n_images, len(df)), random_state=0)
    transform = build_transforms(
        img_size,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        train=True,
        color_aug=color_aug,
        with_mask=True,
    )
    t0 = time.perf_counter()
    dataset = build_dataset(manifest_to_records(df), transform, cache=cache)
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
