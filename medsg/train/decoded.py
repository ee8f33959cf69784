"""Decode each image once per run, not once per fold: one cache of the pipeline's deterministic head.

A fold's train / val / test sets are disjoint subsets of the same manifest, and their pipelines share the
deterministic head (decode, RGB, resize, scale). ``RunDecodes`` caches that head over the whole manifest once
(MONAI ``CacheDataset`` in RAM, ``PersistentDataset`` on disk, or nothing), and ``view`` gives each fold part a
dataset that applies only the rest (augmentation, normalisation) to a copy of the cached sample.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from monai.data import Dataset
from monai.transforms import Compose, RandomizableTrait, Transform


def head_length(transform: Compose) -> int:
    """Steps before the first random (or non-MONAI) one: where MONAI's ``CacheDataset`` cuts the pipeline."""
    for i, step in enumerate(transform.transforms):
        if isinstance(step, RandomizableTrait) or not isinstance(step, Transform):
            return i
    return len(transform.transforms)


def shared_head(train: Compose, evaluate: Compose) -> int | None:
    """The length of the deterministic head the train and eval pipelines share, or None if they differ."""
    n = head_length(train)
    same = [type(s) for s in train.transforms[:n]] == [type(s) for s in evaluate.transforms[:n]]
    return n if n > 0 and same else None


class _CachedItems(Sequence):
    """A fold part's samples, read from the run cache by position; copies, so augmentation never edits it."""

    def __init__(self, base: Dataset, positions: list[int]) -> None:
        self.base, self.positions = base, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return copy.deepcopy(self.base[self.positions[i]])


class RunDecodes:
    """The deterministic head of the pipeline over every record of a run, computed once and shared by folds.

    ``base`` is a dataset over the run's records with the head as its transform (``ids[i]`` is record ``i``),
    e.g. ``medsg.data.dataset.build_dataset(records, head, cache=...)``.
    """

    def __init__(self, ids: Sequence[str], base: Dataset) -> None:
        if len(ids) != len(base):
            raise ValueError(f"{len(ids)} ids for a dataset of {len(base)} records")
        self.position = {str(i): n for n, i in enumerate(ids)}
        self.base = base

    def view(self, ids: Sequence[str], rest: Compose) -> Dataset:
        """A dataset of ``ids`` (in that order) that applies ``rest`` to the cached head output."""
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the run's records, e.g. {missing[:3]}")
        return Dataset(_CachedItems(self.base, [self.position[i] for i in ids]), rest)
