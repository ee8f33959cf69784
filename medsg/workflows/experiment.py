"""Orchestration of ``medsg run``: config -> manifest -> audit -> splits -> k folds -> report.

The run folder (``<output_dir>/<name>/``) gets ``config.yaml`` (resolved, with provenance), ``audit.json``,
``manifest.csv`` (after the audit policy), ``splits.json``, ``protocol.json`` (audit settings, dropped ids,
what the groups are) and one ``fold_K/`` per fold; see
``medsg.train.fold`` for a fold's files. Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

import medsg
from medsg.config import (
    DEFAULT_BOOTSTRAP,
    Config,
    config_hash,
    dump_config,
    load_config,
    load_saved_config,
    read_yaml,
    resolved_config,
    result_diff,
)
from medsg.core.device import resolve_device
from medsg.core.errors import ConfigError, ReportRefused
from medsg.core.io import atomic_write_text, read_json
from medsg.core.provenance import git_clean, git_hash, git_toplevel
from medsg.core.run_folder import ALL, CONFIG_FILE, DONE_FILE, RunFolder
from medsg.data import class_names, load_manifest, save_manifest
from medsg.data.audit import apply_audit_policy, audit_manifest, describe_grouping, read_audit, write_audit
from medsg.data.dataset import build_dataset, manifest_to_records
from medsg.data.dicom import add_header_groups, grouping_keyword, new_salt
from medsg.data.manifest import mask_list
from medsg.data.splits import check_no_leakage, inner_split, load_or_create_splits, read_group_salt
from medsg.explain import EXPLAIN_DIR, collect_explanations, fold_explain_dirs
from medsg.report import write_report
from medsg.report.compare import write_comparison
from medsg.report.operating_points import critical_class
from medsg.train import ddp
from medsg.train.decoded import RunDecodes, shared_head
from medsg.train.distill import check_teachers
from medsg.train.fold import trainer_class
from medsg.train.kfold import run_folds, train_final
from medsg.train.loader import FoldData
from medsg.train.utils import derive_seed, seed_everything
from medsg.workflows.pretrain import pretraining_source

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The cleaned manifest, its class names, the outer folds and the audit's content hash."""

    manifest: pd.DataFrame
    class_names: list[str]
    splits: list[dict[str, list[str]]]
    audit_hash: str


# ---------------------------------------------------------------- data preparation


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
            write_audit(report, audit_path)
    ddp.barrier()
    if not dist.is_main and audit_path is not None:
        report = read_audit(audit_path)
    # Duplicate clusters are merged into the column the splits group by, so none can straddle folds.
    manifest = apply_audit_policy(
        raw, report, conflicts=cfg.data.audit.conflicts, group_col=cfg.splits.grouping
    )
    dropped = sorted(set(raw["id"]) - set(manifest["id"]))
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
    names = class_names(cfg.data.adapter, cfg.data.root)
    if run_dir is not None and dist.is_main:
        save_manifest(manifest, run_dir / "manifest.csv")
        if used is None:
            atomic_write_text(run_dir / "splits.json", Path(cfg.split_file).read_text(encoding="utf-8"))
        protocol = protocol_record(cfg, list(raw["id"]), dropped, used or cfg.split_file, used is not None)
        pretraining = pretraining_source(cfg.model.pretrained, cfg.data.adapter, list(raw["id"]))
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


# ---------------------------------------------------------------- run folder


# files prepare_data derives from the config and the data; a restart with a new config makes them again
DERIVED_FILES = ("audit.json", "manifest.csv", "splits.json", "protocol.json")


def run_has_progress(run_dir: Path) -> bool:
    """Whether any fold of the run has trained: a checkpoint or a DONE marker (then its config is fixed)."""
    return any(run_dir.glob(f"fold_*/{DONE_FILE}")) or any(run_dir.glob("fold_*/checkpoint_*.pt"))


def save_or_check_config(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Write config.yaml on first use; later runs must match it in everything that changes results, and
    update only ``REPORT_SECTIONS`` (what the report computes and explains).

    A run with no trained fold (for example a start that failed on a data or model error) may be restarted
    with a corrected config: its config.yaml is replaced and its derived data files are removed, so the
    restart cannot reuse folds or a manifest made under the old config.
    """
    new = resolved_config(cfg)
    path = RunFolder(run_dir).config
    if path.exists():
        saved = read_yaml(path)
        diff = result_diff(saved, new)
        if diff and not run_has_progress(run_dir):
            log.warning(
                "%s has no trained fold: replacing its config.yaml (%s) and starting it again",
                run_dir,
                "; ".join(diff[:8]),
            )
            for name in DERIVED_FILES:
                (run_dir / name).unlink(missing_ok=True)
        elif diff:
            raise ConfigError(
                f"{run_dir} was started with a different config ({'; '.join(diff[:8])}) and has trained "
                "folds. Use a new experiment.name or experiment.output_dir, or delete the folder to start over."
            )
        else:
            if saved.get("provenance") != new["provenance"]:
                log.warning(
                    "resuming %s with other code versions: %s (was %s)",
                    run_dir,
                    new["provenance"],
                    saved.get("provenance"),
                )
            changed = [k for k in REPORT_SECTIONS if saved.get(k) != new.get(k)]
            if not changed:
                return saved
            # what the report computes may follow the config as it is now; training and provenance stay
            log.info(
                "%s: taking %s from the current config (no training number depends on them)", run_dir, changed
            )
            new = saved | {k: new[k] for k in changed}
    atomic_write_text(path, dump_config(new))
    return new


REPORT_SECTIONS = ("eval", "explain")  # sections a finished run may update: they change no training number


def collect_run_explanations(run_dir: Path, cfg: Config) -> None:
    """Pool the folds' explanations into ``<run_dir>/explain/`` (scores with grouped CIs, review.html)."""
    folders = fold_explain_dirs(run_dir)
    if not folders:
        return
    collect_explanations(
        folders,
        run_dir / EXPLAIN_DIR,
        f"{cfg.experiment.name}: explanations of out-of-fold test cases",
        n_bootstrap=cfg.eval.bootstrap,
        seed=cfg.experiment.seed,
        critical_class=review_critical_class(cfg, folders),
    )


def review_critical_class(cfg: Config, folders: list[Path]) -> str | None:
    """The class the review page's outcome filter starts on: the report's critical class (eval.critical_class,
    else the dataset's: malignant for BUSI, MEL for ISIC), or None."""
    names = read_json(folders[0] / "explain.json").get("class_names", [])
    return critical_class(cfg.eval.critical_class, cfg.data.adapter, names)[0]


MADE_BY = "made_by.json"  # in a report folder: which run, config, commit and tree made it


def report_origin(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """What ``made_by.json`` records: the run (name and config hash), whether every fold is in, and the code.

    The hash is of config.yaml as written (``config_hash`` skips provenance and I/O knobs), so the reports
    made before the typed reading keep their hash."""
    run = RunFolder(run_dir)
    return {
        "run_id": cfg.experiment.name,
        "config_hash": config_hash(read_yaml(run.config)),
        "complete": run.finished(cfg.splits.k),
        "run_commit": cfg.saved_provenance.get("git"),
        "report_commit": git_hash(),
        "clean_tree": git_clean(),
    }


def check_report_target(out: Path, origin: dict[str, Any], force: bool) -> None:
    """Refuse to replace another run's report, or a complete report by a partial one, unless ``force``.

    A report folder without made_by.json (made before it existed) is replaced only by a run of the same
    experiment name, read from its summary.json.
    """
    if force or not (out / "report.md").exists() and not (out / MADE_BY).exists():
        return

    made_by = out / MADE_BY
    if made_by.is_file():
        old = read_json(made_by)
    else:
        summary = out / "summary.json"
        name = read_json(summary, default={}).get("experiment")
        old = {"run_id": name, "config_hash": origin["config_hash"], "complete": True}
    why = None
    if old.get("run_id") != origin["run_id"] or old.get("config_hash") != origin["config_hash"]:
        why = f"it holds the report of another run ({old.get('run_id')}, config {str(old.get('config_hash'))[:12]})"
    elif old.get("run_commit") and origin.get("run_commit") and old["run_commit"] != origin["run_commit"]:
        # the same config run again (another commit or machine) is another run: its numbers can differ
        why = (
            f"it holds the report of the same config run at commit {str(old['run_commit'])[:10]}, and this run "
            f"started at {str(origin['run_commit'])[:10]}"
        )
    elif old.get("complete") and not origin["complete"]:
        why = "it holds the report of the complete run, and this run has unfinished folds"
    if why:
        raise ReportRefused(
            f"not writing the report into {out}: {why}. Pass --out to write it elsewhere, or --force to "
            "replace it."
        )


def check_reports_write(out: Path, force: bool = False, checkout: Path | None = None) -> None:
    """Refuse to write into the ``reports/`` of medsg's checkout (or ``checkout``) from a tree with uncommitted
    changes outside it, unless ``force``: a committed report must come from committed code (made_by.json
    names the commit)."""
    top = git_toplevel(checkout)
    if force or top is None or not Path(out).resolve().is_relative_to((top / "reports").resolve()):
        return
    if git_clean(top) is False:
        raise ReportRefused(
            f"not writing into {out}: the checkout {top} has uncommitted changes outside reports/ (see `git "
            "status`), so the result could not be traced to a commit. Commit them first, write elsewhere "
            "with --out, or pass --force."
        )


def write_run_report(run_dir: Path, report_dir: Path | None = None, force: bool = False) -> Path:
    """``medsg report``: aggregate a run folder's finished folds into summary.json and report.md/html.

    A partial run (unfinished folds) reports into ``<run_dir>/report/`` unless ``report_dir`` is given, so a
    quick try never lands in ``reports/``; any report folder records its origin in made_by.json, and
    another run's report there is not replaced without ``force``.
    """
    run_dir = Path(run_dir)
    cfg = load_saved_config(run_dir)
    origin = report_origin(run_dir, cfg)
    if report_dir is not None:
        out = Path(report_dir)
    elif origin["complete"]:
        out = Path(cfg.experiment.report_dir or Path("reports") / cfg.experiment.name)
    else:
        out = run_dir / "report"
        log.info("the run has unfinished folds: its partial report goes to %s", out)
    check_report_target(out, origin, force)
    check_reports_write(out, force)
    collect_run_explanations(run_dir, cfg)
    path = write_report(run_dir, out, n_bootstrap=cfg.eval.bootstrap, seed=cfg.experiment.seed)
    # the run's resolved config beside the numbers it made, so `medsg reproduce REPORT_DIR` can rerun a fold
    atomic_write_text(out / CONFIG_FILE, RunFolder(run_dir).config.read_text(encoding="utf-8"))
    atomic_write_text(out / MADE_BY, json.dumps(origin, indent=1) + "\n")
    log.info("report written to %s", path)
    return path


def _report_after_training(run_dir: Path, report_dir: Path) -> None:
    """The report at the end of a run; a refusal (another run's report there) is logged, since the folds are
    safely written and `medsg report` can write it elsewhere."""
    try:
        write_run_report(run_dir, report_dir)
    except ReportRefused as exc:
        log.error("%s (the run itself is complete: `medsg report %s --out DIR`)", exc, run_dir)


# ---------------------------------------------------------------- entry points


def run_experiment(
    cfg: Config,
    folds: list[int | str] | None = None,
    quiet: bool = False,
    report: bool = True,
    new_split_expected: bool = False,
) -> Path:
    """Train and test the requested folds (all CV folds by default); write the report once every fold is done.

    ``"all"`` among ``folds`` trains the final model on every image after the requested CV folds
    (``medsg.train.final``). ``new_split_expected``: creating the split file is the plan (the demo), so it is
    logged as INFO.
    """
    if cfg.train.deterministic:  # must be set before the first CUDA context (deterministic cuBLAS)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist = ddp.dist_info_from_env()
    device = resolve_device(cfg.train.device, dist.local_rank)
    ddp.init_distributed(dist, device)
    try:
        run_dir = cfg.run_dir.resolve()
        final = bool(folds) and ALL in folds
        cv = [f for f in folds or [] if f != ALL]
        folds = list(range(cfg.splits.k)) if not folds else sorted(set(cv))
        bad = [f for f in folds if not isinstance(f, int) or not 0 <= f < cfg.splits.k]
        if bad:
            raise ConfigError(f"--fold {bad}: splits.k is {cfg.splits.k}, so folds are 0..{cfg.splits.k - 1}")
        seed_everything(cfg.experiment.seed, cfg.train.deterministic)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_or_check_config(cfg, run_dir)
        ddp.barrier()
        data = prepare_data(cfg, run_dir, dist, new_split_expected)
        log.info(
            "%s: %d images, %d classes %s, %d folds; running folds %s on %s%s",
            cfg.experiment.name,
            len(data.manifest),
            len(data.class_names),
            data.class_names,
            cfg.splits.k,
            folds + ([ALL] if final else []),
            device,
            f" x{dist.world_size} processes" if dist.enabled else "",
        )
        factory = ManifestFolds(cfg, data, run_dir, dist)
        if cfg.train.distill_teachers:  # every fold's teachers, before the first fold trains
            wanted = {f: set(factory.fold_ids(f)["test"]) for f in folds} | ({ALL: None} if final else {})
            check_teachers(cfg.train.distill_teachers, wanted, data.class_names)
        run_folds(cfg, folds, factory, run_dir, dist, quiet)
        if final:
            train_final(cfg, factory, run_dir, dist, quiet)
        if report and dist.is_main and folds:
            if RunFolder(run_dir).finished(cfg.splits.k):
                _report_after_training(run_dir, cfg.report_dir)
            else:
                log.info(
                    "not all %d folds are done yet; run `medsg report %s` when they are",
                    cfg.splits.k,
                    run_dir,
                )
        return run_dir
    finally:
        ddp.shutdown_distributed()


def run_from_file(
    config_path: str | Path,
    overrides: list[str] | None = None,
    folds: list[int | str] | None = None,
    quiet: bool = False,
) -> Path:
    """``medsg run``: load and check the config file, then ``run_experiment``; returns the run folder."""
    return run_experiment(load_config(config_path, overrides), folds, quiet)


def compare_run_folders(
    run_dirs: list[Path], out: Path | None = None, force: bool = False, decision: str | None = None
) -> Path:
    """``medsg compare``: paired comparison of runs on one split file, written to ``out`` (default
    ``reports/compare_<first>_<second>``); the bootstrap settings are the first run's; ``decision`` scores every
    run under one rule instead of each run's headline rule."""
    run_dirs = [Path(d) for d in run_dirs]
    saved = [load_saved_config(d, required=False) for d in run_dirs]
    first = saved[0] if saved else None
    names = [s.experiment.name if s else d.name for s, d in zip(saved, run_dirs, strict=True)]
    out = Path(out) if out else Path("reports") / ("compare_" + "_vs_".join(names))
    check_reports_write(out, force)
    path = write_comparison(
        run_dirs,
        out,
        n_bootstrap=first.eval.bootstrap if first else DEFAULT_BOOTSTRAP,
        seed=first.experiment.seed if first else 0,
        force=force,
        decision=decision,
    )
    log.info("comparison written to %s", path)
    return path


def show_config(config_path: str | Path, overrides: list[str] | None = None) -> str:
    """``medsg config``: the config a run would save (defaults filled, ``base:`` merged), without provenance.

    Paths are not checked, so a config can be read on a machine without its data.
    """
    data = resolved_config(load_config(config_path, overrides, check_paths=False))
    data.pop("provenance", None)
    return dump_config(data)


def make_splits(config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """``medsg splits``: audit the data and write the split file once (before parallel fold jobs)."""
    cfg = load_config(config_path, overrides)
    data = prepare_data(cfg, new_split_expected=True)
    sizes = [len(f["val"]) for f in data.splits]
    log.info("split file %s: %d folds, test sizes %s", cfg.split_file, len(sizes), sizes)
    return Path(cfg.split_file)


def _plural(count: object, word: str) -> str:
    return f"{count} {word}" + ("" if str(count) == "1" else "s")


def run_summary_lines(run_dir: Path) -> list[str]:
    """Three lines on a finished run from its summary.json: data and protocol, pooled metrics, per fold."""
    summary = read_json(RunFolder(run_dir).file("summary.json"))
    proto, pooled = summary["protocol"], summary["pooled"]
    ci = summary.get("bootstrap_ci", {}).get("balanced_accuracy", {})
    ci_text = f" (95% CI {ci['low']:.2f}-{ci['high']:.2f})" if {"low", "high"} <= set(ci) else ""
    per_fold = ", ".join(f"{f['balanced_accuracy']:.2f}" for f in summary["per_fold"])
    return [
        f"{proto['experiment']}: {summary['n_pooled']} images ({proto['classes']}), {proto['cross-validation']}, "
        f"{proto['model']}, {_plural(proto['epochs'], 'epoch')}",
        f"pooled out-of-fold: balanced accuracy {pooled['balanced_accuracy']:.2f}{ci_text}, "
        f"macro AUROC {pooled['macro_auroc']:.2f}, accuracy {pooled['accuracy']:.2f}",
        f"balanced accuracy per fold: {per_fold}",
    ]
