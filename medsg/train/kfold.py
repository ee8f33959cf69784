"""The k-fold driver: run the requested folds one after another, skipping finished ones, each under a lock.

``train_final`` trains the final model on every image (``--fold all``, see ``medsg.train.final``) the same way.

It knows nothing about datasets: a ``FoldDataFactory`` (``medsg.workflows.prepare.ManifestFolds`` is the real
one) builds a fold's ``FoldData`` for a model, so the driver can be tested with any tiny dataset and any timm
model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from medsg.config import Config
from medsg.core.device import resolve_device
from medsg.core.io import read_json
from medsg.core.run_folder import ALL, RunFolder
from medsg.train import ddp
from medsg.train.final import FINAL_FILE, FinalTrainer, final_plan
from medsg.train.fold import FoldTrainer, trainer_class
from medsg.train.loader import FoldData
from medsg.train.lock import FileLock
from medsg.train.model import build_model
from medsg.train.state import weights_checksum
from medsg.train.utils import derive_seed, seed_everything

log = logging.getLogger(__name__)


class FoldDataFactory(Protocol):
    """Builds the datasets of one fold; the model comes first because its pretrained_cfg sets mean/std."""

    class_names: list[str]

    def __call__(self, fold: int | str, model: nn.Module) -> FoldData: ...


def final_trainer_class(cfg: Config) -> type[FinalTrainer]:
    """``FinalTrainer`` over the config's trainer, so a custom recipe also trains the final model."""
    custom = trainer_class(cfg)
    if custom is FoldTrainer:
        return FinalTrainer
    if issubclass(custom, FinalTrainer):
        return custom
    return type(f"Final{custom.__name__}", (FinalTrainer, custom), {})


def train_one_fold(
    cfg: Config,
    fold: int,
    make_data: FoldDataFactory,
    run_dir: Path,
    dist: ddp.DistInfo | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Seed, build the model and data of one fold, train it (resuming if possible) and test it."""
    dist = dist or ddp.DistInfo()
    device = resolve_device(cfg.train.device, dist.local_rank)
    seed_everything(derive_seed(cfg.experiment.seed, "fold", fold), cfg.train.deterministic)
    model = build_model(cfg, num_classes=len(make_data.class_names), fold=fold)
    data = make_data(fold, model)
    trainer = trainer_class(cfg)(
        cfg, fold, model, data, RunFolder(run_dir).fold(fold).path, device, dist, quiet
    )
    result = trainer.run()
    if dist.enabled:
        log.info(  # the checksum lets a reader (and test_ddp) see that the ranks ended with the same weights
            "rank %d/%d: fold %d done after %d optimizer steps, weights checksum %s",
            dist.rank,
            dist.world_size,
            fold,
            trainer.num_updates,
            weights_checksum(trainer.model.state_dict()),
        )
    return result


def run_folds(
    cfg: Config,
    folds: Iterable[int],
    make_data: FoldDataFactory,
    run_dir: Path,
    dist: ddp.DistInfo | None = None,
    quiet: bool = False,
) -> dict[int, dict[str, Any]]:
    """Train and test ``folds``; finished folds (DONE) are skipped, partial ones resume.

    The main rank takes a lock on every pending fold before starting, so a second run on the same folder is
    refused at once, while jobs on different folds (``--fold K``) still run in parallel.
    """
    dist = dist or ddp.DistInfo()
    folds, run = list(folds), RunFolder(run_dir)
    pending = run.pending(folds)
    for f in folds:
        if f not in pending:
            log.info("fold %d: already finished (DONE), skipping", f)
    results: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        if dist.is_main:
            for f in pending:
                stack.enter_context(FileLock(run.fold(f).file(".lock")))
        ddp.barrier()
        for f in pending:
            log.info("fold %d/%d: training", f, cfg.splits.k)
            results[f] = train_one_fold(cfg, f, make_data, run_dir, dist, quiet)
            log.info(
                "fold %d: test balanced accuracy %.4f (n=%d, best epoch %d)",
                f,
                results[f].get("balanced_accuracy", float("nan")),
                results[f]["n_test"],
                results[f]["best_epoch"],
            )
    return results


def train_final(
    cfg: Config,
    make_data: FoldDataFactory,
    run_dir: Path,
    dist: ddp.DistInfo | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """``--fold all``: train the final model on every image (``make_data("all", model)``) under a lock.

    Its epochs and temperature come from the finished CV folds (``final_plan``); it selects nothing, so it
    trains with ``selection: last_epoch`` whatever the config says.
    """
    dist = dist or ddp.DistInfo()
    final = RunFolder(run_dir).final
    out = final.path
    if final.done:
        log.info("final model: already finished (DONE), skipping")
        return read_json(final.file(FINAL_FILE))
    plan = final_plan(cfg, run_dir)
    final_cfg = cfg.model_copy(deep=True)
    final_cfg.train.selection = "last_epoch"
    device = resolve_device(cfg.train.device, dist.local_rank)
    with ExitStack() as stack:
        if dist.is_main:
            stack.enter_context(FileLock(out / ".lock"))
        ddp.barrier()
        seed_everything(derive_seed(cfg.experiment.seed, "fold", ALL), cfg.train.deterministic)
        model = build_model(cfg, num_classes=len(make_data.class_names), fold=ALL)
        data = make_data(ALL, model)
        log.info("final model: training on all %d images for %d epochs", len(data.train), plan["epochs"])
        trainer = final_trainer_class(cfg)(final_cfg, ALL, model, data, out, device, dist, quiet, plan=plan)
        return trainer.run()
