"""What the loop is fed: a fold's datasets, each epoch's seeded sample order, loaders and device batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from medsg.data.dataset import plain_tensor


@dataclass
class FoldData:
    """The three disjoint parts of one outer fold. ``val`` is None when selection is ``last_epoch`` without one;
    ``val`` and ``test`` are None for the final model (``--fold all``), which trains on every image.

    Each dataset yields dicts with ``image`` (3,H,W) float tensor, ``label`` int and ``id`` str.
    ``test_rows`` are the test images' manifest rows indexed by id (paths, lesion masks, groups): what the
    explanations need beyond the model input.
    """

    train: Dataset
    train_labels: np.ndarray
    val: Dataset | None
    test: Dataset | None
    class_names: list[str]
    test_rows: pd.DataFrame | None = None


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """'balanced' weights n / (C * n_c), as in sklearn; absent classes get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def epoch_indices(
    labels: np.ndarray, seed: int, balanced: bool, rank: int = 0, world_size: int = 1
) -> list[int]:
    """The sample order of one epoch, drawn from a generator seeded by ``seed``; a rank's shard under DDP.

    Shuffled (or class-balanced with replacement), then padded to a multiple of ``world_size`` and strided like
    ``DistributedSampler``, so every rank sees the same number of batches and a resume replays the same order.
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    if balanced:
        counts = np.bincount(labels)
        weights = torch.tensor(1.0 / counts[labels], dtype=torch.float64)
        order = torch.multinomial(weights, n, replacement=True, generator=gen).tolist()
    else:
        order = torch.randperm(n, generator=gen).tolist()
    if world_size > 1:
        pad = (-n) % world_size
        order = (order + order[:pad])[rank::world_size]
    return order


def make_loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, sampler: Sequence[int] | None = None
) -> DataLoader:
    """A MONAI DataLoader (it seeds the dataset's random transforms from ``seed``, also in workers)."""
    from monai.data import DataLoader as MonaiDataLoader

    gen = torch.Generator().manual_seed(seed)
    return MonaiDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        generator=gen,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (B,3,H,W), labels long (B,)) of a collated batch on ``device``; MONAI MetaTensors unwrapped."""
    images = plain_tensor(batch["image"]).to(device, non_blocking=True).float()
    labels = plain_tensor(batch["label"]).to(device).long().view(-1)
    return images, labels
