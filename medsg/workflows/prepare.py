"""The data side of ``medsg run``: manifest, audit and its policy, the split file, and each fold's datasets.

``prepare_data`` turns a config into the cleaned manifest and the outer folds (writing ``audit.json``,
``manifest.csv``, ``splits.json`` and ``protocol.json`` into the run folder); ``ManifestFolds`` turns one fold of
them into the MONAI datasets the trainer reads. ``medsg explain`` rebuilds a finished run's test sets with both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

import medsg
from medsg.config import Config, pretrained_sources
from medsg.core.errors import ConfigError, DataError
from medsg.core.io import atomic_write_text
from medsg.core.run_folder import ALL, RunFolder
from medsg.data import class_names, load_manifest, save_manifest
from medsg.data.audit import apply_audit_policy, audit_manifest, describe_grouping, read_audit, write_audit
from medsg.data.dataset import build_dataset, manifest_to_records
from medsg.data.dicom import add_header_groups, grouping_keyword, new_salt
from medsg.data.manifest import mask_list
from medsg.data.splits import (
    check_folds_train_every_class,
    check_no_leakage,
    check_trainable_classes,
    inner_split,
    load_or_create_splits,
    read_group_salt,
)
from medsg.train import ddp
from medsg.train.decoded import RunDecodes, shared_head
from medsg.train.fold import trainer_class
from medsg.train.loader import FoldData
from medsg.train.model import check_transfer_source, model_folder_of
from medsg.train.utils import derive_seed
from medsg.workflows.pretrain import pretraining_source

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The cleaned manifest, its class names, the outer folds and the audit's content hash."""

    manifest: pd.DataFrame
    class_names: list[str]
    splits: list[dict[str, list[str]]]
    audit_hash: str


def grouping_description(cfg: Config) -> str:
    """What the split's groups are, in words, for the split header and the report's protocol text."""
    audit = cfg.data.audit
    return describe_grouping(
        cfg.data.adapter, cfg.splits.grouping, audit.near_dup_threshold, audit.min_correlation
    )


def dicom_group_salt(cfg: Config, run_dir: Path | None, dist: ddp.DistInfo | None = None) -> str | None:
    """The salt of a ``dicom:<Keyword>`` grouping, None for any other grouping.

    Read from the split file (a resumed run's own copy first), so every run on the same data hashes a patient
    to the same group; a new split gets a new salt, drawn by rank 0 and shared with the other ranks.
    """
    if grouping_keyword(cfg.splits.grouping) is None:
        return None
    own = run_dir / "splits.json" if run_dir is not None else None
    salt = read_group_salt(own if own is not None and own.is_file() else cfg.split_file) or new_salt()
    if dist is not None and dist.enabled:
        import torch.distributed as torch_dist

        box = [salt]
        torch_dist.broadcast_object_list(box, src=0)
        salt = box[0]
    return salt


def _note_new_split_file(path: Path, expected: bool) -> None:
    """A new split file means new folds: say where it went, since a relative path follows the working dir."""
    canonical = Path(medsg.__file__).resolve().parents[1] / "data_splits"
    level = logging.INFO if expected else logging.WARNING
    log.log(
        level,
        "created a NEW split file %s. Committed canonical split files live in the repository's data_splits/ "
        "(%s); relative paths resolve against the working directory, so start runs from the repository root "
        "or set splits.file to reuse a canonical file.",
        path.resolve(),
        canonical,
    )


def protocol_record(
    cfg: Config, raw_ids: list[str], dropped: list[str], split_file: Path, own_copy: bool = False
) -> dict[str, Any]:
    """What ``protocol.json`` holds: audit settings, dropped ids, the grouping and the split file used.

    ``own_copy``: the folds came from the run's own splits.json (a resume), which is then the file named,
    with the config's split file kept as where that copy came from.
    """
    origin = {"split_file_copied_from": str(cfg.split_file)} if own_copy else {}
    return origin | {
        "grouping": cfg.splits.grouping,
        "grouping_description": grouping_description(cfg),
        "audit": cfg.data.audit.model_dump(mode="json"),
        "n_images_listed": len(raw_ids),
        "n_dropped": len(dropped),
        "dropped_ids": dropped,
        "split_file": str(Path(split_file).resolve()),
    }


def check_same_data_on_resume(run_dir: Path, manifest_hash: str) -> None:
    """Refuse to resume a run whose trained folds saw other data (content or labels under its ids).

    ``audit.json`` of the run's last start records the data it trained on; it is kept, not rewritten, so the
    refusal loses nothing. A run with no trained fold may start again on the new data.
    """
    audit_path = run_dir / "audit.json"
    if not audit_path.is_file() or not RunFolder(run_dir).has_trained:
        return
    before = read_audit(audit_path).manifest_hash  # "" in a record older than the hash: nothing to compare
    if before and before != manifest_hash:
        raise DataError(
            f"{run_dir} has trained folds, and the data they trained on (its ids, labels or image contents) has "
            f"changed since (content hash {before[:12]} in {audit_path}, {manifest_hash[:12]} now): a resume "
            "would mix the two. "
            "Restore the data the run started on, or start a new run (another experiment.name or "
            "experiment.output_dir)."
        )


def prepare_data(
    cfg: Config,
    run_dir: Path | None = None,
    dist: ddp.DistInfo | None = None,
    new_split_expected: bool = False,
) -> PreparedData:
    """Manifest, audit + policy, and the split file (created once, atomically, if absent).

    With ``run_dir``, writes audit.json, manifest.csv, splits.json and protocol.json there (main rank only).
    Creating a split file logs a WARNING with its absolute path unless ``new_split_expected`` (``medsg splits``,
    the demo): a run that silently makes new folds is not comparable with runs on the canonical ones.
    """
    dist = dist or ddp.DistInfo()
    raw = load_manifest(cfg.data.adapter, cfg.data.root, **cfg.data.options)
    salt = dicom_group_salt(cfg, run_dir, dist)  # None unless splits.grouping is dicom:<Keyword>
    if salt is not None:  # the header id becomes a manifest column of salted hashes, named like the grouping
        raw = add_header_groups(raw, cfg.splits.grouping, salt)
    if cfg.splits.grouping not in raw.columns:  # checked before the audit, which can take minutes
        raise ConfigError(
            f"splits.grouping: column {cfg.splits.grouping!r} is not in the manifest (columns: "
            f"{list(raw.columns)}); use 'group' or a column of your CSV"
        )
    audit_path = (run_dir / "audit.json") if run_dir else None
    if dist.is_main or audit_path is None:
        report = audit_manifest(
            raw,
            near_dup_threshold=cfg.data.audit.near_dup_threshold,
            min_correlation=cfg.data.audit.min_correlation,
        )
        if audit_path is not None:
            check_same_data_on_resume(run_dir, report.manifest_hash)
            write_audit(report, audit_path)
    ddp.barrier()
    if not dist.is_main and audit_path is not None:
        report = read_audit(audit_path)
    # Duplicate clusters are merged into the column the splits group by, so none can straddle folds.
    manifest = apply_audit_policy(
        raw, report, conflicts=cfg.data.audit.conflicts, group_col=cfg.splits.grouping
    )
    dropped = sorted(set(raw["id"]) - set(manifest["id"]))
    check_trainable_classes(manifest, cfg.splits.grouping)  # before a split file is written for such data
    # supervised transfer from a medsg model: its folder, or a weights file inside one
    for pretrained in pretrained_sources(cfg, range(cfg.splits.k)):
        named = Path(pretrained)
        source = named if named.is_dir() else model_folder_of(named)
        if source is not None:
            check_transfer_source(source, list(raw["path"]), weights_file=source != named)
    # A resumed run keeps the folds it started with, whatever the working directory is now.
    used = run_dir / "splits.json" if run_dir is not None and (run_dir / "splits.json").is_file() else None
    split_args = dict(
        path=used or cfg.split_file,
        k=cfg.splits.k,
        seed=cfg.splits.seed,
        dataset=cfg.data.adapter,
        grouping=cfg.splits.grouping,
        audit_hash=report.manifest_hash,
        group_col=cfg.splits.grouping,
        excluded_ids=dropped,
        allow_subset=cfg.splits.allow_subset,
        grouping_description=grouping_description(cfg),
        header_extra={"group_salt": salt} if salt else None,
    )
    if dist.is_main:  # rank 0 creates the file once; the others then read it
        created = not Path(split_args["path"]).exists()
        splits = load_or_create_splits(manifest, **split_args)
        if created:
            _note_new_split_file(Path(split_args["path"]), new_split_expected)
    ddp.barrier()
    if not dist.is_main:
        splits = load_or_create_splits(manifest, **split_args)
    check_no_leakage(manifest, splits, cfg.splits.grouping)
    check_folds_train_every_class(manifest, splits)
    names = class_names(cfg.data.adapter, cfg.data.root, **cfg.data.options)
    if run_dir is not None and dist.is_main:
        save_manifest(manifest, run_dir / "manifest.csv")
        if used is None:
            atomic_write_text(run_dir / "splits.json", Path(cfg.split_file).read_text(encoding="utf-8"))
        protocol = protocol_record(cfg, list(raw["id"]), dropped, used or cfg.split_file, used is not None)
        test_ids = {fold: [str(i) for i in part["val"]] for fold, part in enumerate(splits)}
        pretraining = pretraining_source(cfg.model.pretrained, cfg.data.adapter, list(raw["id"]), test_ids)
        if pretraining is not None:
            protocol["pretraining"] = pretraining
        atomic_write_text(run_dir / "protocol.json", json.dumps(protocol, indent=1) + "\n")
    return PreparedData(manifest, names, splits, report.manifest_hash)


class ManifestFolds:
    """The real ``FoldDataFactory``: outer fold from the split file, inner split for selection, MONAI datasets.

    With ``data.cache`` memory or disk, every image is decoded and resized once per run (``RunDecodes``): all
    folds read that cache and apply only augmentation and normalisation themselves.
    """

    def __init__(
        self, cfg: Config, data: PreparedData, run_dir: Path, dist: ddp.DistInfo | None = None
    ) -> None:
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.dist = dist or ddp.DistInfo()
        self.class_names = data.class_names
        self._by_id = data.manifest.set_index("id", drop=False)  # rows looked up by id, for every fold
        self._decodes: RunDecodes | None = None  # filled by the first fold, reused by the others
        self.trainer = trainer_class(cfg)  # its hooks: the pipelines, and whether records keep their masks
        if cfg.train.mask_loss_weight > 0 and not data.manifest["mask_paths"].map(mask_list).map(bool).any():
            raise ConfigError(
                f"train.mask_loss_weight is {cfg.train.mask_loss_weight:g} but no image of {cfg.data.adapter} "
                "has a lesion mask (manifest column mask_paths); set train.mask_loss_weight: 0"
            )

    def fold_ids(self, fold: int | str) -> dict[str, list[str]]:
        """train / val (inner, for selection) / test (outer fold) ids; the test ids never reach selection.

        ``fold="all"`` (the final model) trains on every id of the manifest, with neither val nor test.
        """
        if fold == ALL:
            return {"train": sorted(self.data.manifest["id"]), "val": [], "test": []}
        if not 0 <= fold < len(self.data.splits):
            raise ConfigError(
                f"fold {fold} does not exist: splits.k is {len(self.data.splits)} (folds 0..k-1)"
            )
        outer = self.data.splits[fold]
        train_ids, test_ids = list(outer["train"]), list(outer["val"])
        val_ids: list[str] = []
        if self.cfg.splits.inner_val_fraction > 0:
            subset = self.data.manifest[self.data.manifest["id"].isin(set(train_ids))]
            train_ids, val_ids = inner_split(
                subset,
                self.cfg.splits.inner_val_fraction,
                seed=derive_seed(self.cfg.splits.seed, "inner", fold),
                group_col=self.cfg.splits.grouping,
            )
        elif self.cfg.train.selection == "inner_val":
            raise ConfigError(
                "train.selection: inner_val needs splits.inner_val_fraction > 0 (or use last_epoch)"
            )
        # Cannot happen with a valid split file; checked because it would silently inflate results.
        overlap = set(test_ids) & (set(train_ids) | set(val_ids))
        if overlap:
            raise ConfigError(
                f"fold {fold}: {len(overlap)} test ids also in training/selection, e.g. {sorted(overlap)[:3]}"
            )
        return {"train": sorted(train_ids), "val": sorted(val_ids), "test": sorted(test_ids)}

    def _pipelines(self, model: nn.Module) -> dict[bool, Any]:
        """The train (True) and eval (False) pipelines for ``model``'s mean/std."""
        import timm

        data_cfg = timm.data.resolve_data_config({}, model=model)
        mean, std = tuple(data_cfg["mean"]), tuple(data_cfg["std"])
        return {train: self.trainer.build_transforms(self.cfg, mean, std, train) for train in (True, False)}

    def _dataset(self, ids: list[str], transform: Any) -> Any:
        """A dataset of ``ids`` through ``transform`` (masks only for a trainer that uses them), cached as
        ``data.cache`` says."""
        rows = self._by_id.loc[ids].reset_index(drop=True)
        records = manifest_to_records(rows, with_masks=self.trainer.uses_masks)
        return build_dataset(
            records,
            transform,
            cache=self.cfg.data.cache,
            cache_dir=self.cache_dir,
            num_workers=self.cfg.train.workers,
        )

    @property
    def cache_dir(self) -> Path:
        """``data.cache_dir``, or ``<run_dir>/cache`` (kept across folds, resumes and kill -9)."""
        return Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else self.run_dir / "cache"

    def _shared(self, pipelines: dict[bool, Any]) -> tuple[RunDecodes, dict[bool, Any]] | None:
        """The run-wide decode cache (built on the first fold) and each pipeline's remaining steps."""
        if self.cfg.data.cache == "none":
            return None
        n = shared_head(pipelines[True], pipelines[False])
        if n is None:  # cannot happen with build_transforms today; caching per fold part still works
            log.warning("train and eval pipelines share no deterministic head: decoding once per fold")
            return None
        if self._decodes is None:
            ids = list(self.data.manifest["id"])
            head = type(pipelines[True])(pipelines[True].transforms[:n])  # keeps UntrackedCompose
            self._decodes = RunDecodes(ids, self._dataset(ids, head))
        return self._decodes, {train: type(p)(p.transforms[n:]) for train, p in pipelines.items()}

    def __call__(self, fold: int | str, model: nn.Module) -> FoldData:
        ids = self.fold_ids(fold)
        if self.dist.is_main:
            atomic_write_text(
                RunFolder(self.run_dir).fold(fold).file("inner_split.json"), json.dumps(ids, indent=1)
            )
        pipelines = self._pipelines(model)
        shared = self._shared(pipelines)

        def dataset(part: str, train: bool):
            if not ids[part]:
                return None
            if shared is not None:
                decodes, rest = shared
                return decodes.view(ids[part], rest[train])
            return self._dataset(ids[part], pipelines[train])

        return FoldData(
            train=dataset("train", True),
            train_labels=self._by_id.loc[ids["train"], "label"].to_numpy(dtype=np.int64),
            val=dataset("val", False),
            test=dataset("test", False),
            class_names=self.class_names,
            test_rows=self._by_id.loc[ids["test"]],
        )
