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
from medsg.data.transforms import random_parts
from medsg.train.utils import derive_seed


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


class SeededAugmentation(Dataset):
    """``dataset[index]`` with its random transforms drawing from the sample's own seed: the key is ``(index,
    seed)``. The draws then depend on the epoch and the sample's place in it alone, not on how many DataLoader
    workers there are or which one loads the sample (MONAI seeds the main process and each worker's copy of the
    transforms differently). The values can still differ in the last float bits: PyTorch runs a worker on one
    thread, and some transforms' arithmetic depends on the thread count.

    All random parts of the pipeline share one generator, reseeded per sample (about a microsecond, where
    reseeding each part through ``set_random_state`` costs about a millisecond). It is handed to them again for
    every sample because MONAI's loaders reseed each part's own generator when they start.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.rng = np.random.RandomState()
        self.parts = random_parts(getattr(dataset, "transform", None))  # none: nothing random to seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        self.rng.seed(seed)
        for part in self.parts:
            part.R = self.rng
        return self.dataset[index]


def training_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    order: Sequence[int],
    epoch_seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """One epoch's training loader over ``order`` (``epoch_indices``), each sample's augmentation seeded from the
    epoch seed and its place in the epoch's full order (``rank + k * world_size``, as the shards interleave), so
    the draws do not depend on ``train.workers`` (``SeededAugmentation``)."""
    samples = [(i, derive_seed(epoch_seed, "augment", rank + k * world_size)) for k, i in enumerate(order)]
    return make_loader(SeededAugmentation(dataset), batch_size, workers, seed=epoch_seed, sampler=samples)


def to_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (B,3,H,W), labels long (B,)) of a collated batch on ``device``; MONAI MetaTensors unwrapped."""
    images = plain_tensor(batch["image"]).to(device, non_blocking=True).float()
    labels = plain_tensor(batch["label"]).to(device).long().view(-1)
    return images, labels
