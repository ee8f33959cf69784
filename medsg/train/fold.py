"""One fold: fine-tune on the training part, select on the inner validation split, predict the test fold once.

The loop follows timm's transfer recipe (layer-wise lr decay, warmup + cosine per step, optional EMA, AMP on GPU)
and is written so that a run killed at any point resumes exactly: the data order of every epoch comes from a
generator seeded by (seed, fold, epoch), the global RNGs are reseeded the same way, and ``checkpoint_last.pt``
(written atomically after ``checkpoint_best.pt`` and ``history.csv``) holds everything else (``train.state``).
Its pieces live beside it: ``loader`` (what it is fed), ``evaluate`` (prediction, per-epoch metrics),
``selection`` (which epoch wins) and ``model`` (building it); explanations come from ``medsg.explain``.

A recipe is changed by overriding hooks, as in nnU-Net's trainers, not by editing the loop:
``build_transforms`` (the fold's train / eval pipelines), ``build_optimizer``, ``build_scheduler``,
``build_ema``, ``build_criterion``, ``batch_loss`` (one batch's forward and loss), ``train_step`` (one batch:
loss, backward, optimizer and scheduler step), ``extra_state`` / ``load_extra_state`` (what a subclass adds to
the resumable checkpoint), ``validate`` (the inner-validation metrics of an epoch) and ``on_epoch_end``. A
config names its trainer with ``train.trainer: my_package.module.MyTrainer`` (a subclass of ``FoldTrainer``;
``trainer_class`` resolves it; ``train.mask_loss_weight > 0`` picks ``medsg.train.mask_aux.MaskAuxTrainer``,
``train.distill_teachers`` ``medsg.train.distill.DistillTrainer``).
``medsg.train.final.FinalTrainer`` (``--fold all``) is such a subclass, and is mixed into a custom trainer for
the final model. Code that only watches (benchmarks, progress) attaches a ``TrainerCallback`` instead of
subclassing. After the test prediction, ``calibrate`` fits the fold's temperature and prior-shift strengths on
its inner validation predictions at the selected epoch (``val_predictions.csv``, see ``medsg.calibration``) and
writes ``calibration.json`` and ``calibrated_predictions.csv``; ``predictions.csv`` keeps the raw probabilities.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medsg.calibration import (
    CALIBRATED_PREDICTIONS,
    CALIBRATION_FILE,
    PRIOR_KEY,
    VAL_PREDICTIONS,
    apply_temperature,
    fold_calibration,
    prior_shift_record,
    probability_scores,
)
from medsg.config import DEFAULT_TRAINER, Config
from medsg.core.errors import CheckpointError, ConfigError, TrainingDiverged
from medsg.core.io import ID_CSV, atomic_torch_save, atomic_write_text
from medsg.core.run_folder import FoldFolder
from medsg.data.transforms import build_transforms
from medsg.explain import EXPLAIN_DIR, ExplainSettings, cases_from_manifest, explain_test_fold
from medsg.metrics import classification_metrics
from medsg.models.checkpoint import load_exact
from medsg.train import ddp
from medsg.train.evaluate import predict, val_metrics
from medsg.train.loader import FoldData, class_weights, epoch_indices, to_device, training_loader
from medsg.train.selection import is_better
from medsg.train.state import (
    capture_rng,
    check_checkpoint_matches,
    load_training_checkpoint,
    restore_rng,
)
from medsg.train.utils import amp_dtype, autocast, derive_seed

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_macro_auroc",
    "time_s",
]


class TrainerCallback:
    """Watches a ``FoldTrainer`` without changing it: ``medsg bench epoch`` times the phases of the very
    ``train_step`` a run executes through ``on_phase_end``. Override what you need; every method is a no-op."""

    def on_phase_end(self, trainer: FoldTrainer, phase: str) -> None:
        """After each phase of ``train_step``: "forward" (with the loss), "backward" (with clipping), "optimizer"."""

    def on_epoch_end(self, trainer: FoldTrainer, row: dict[str, float]) -> None:
        """After each epoch's validation, with its history row."""


MASK_TRAINER = "medsg.train.mask_aux.MaskAuxTrainer"
DISTILL_TRAINER = "medsg.train.distill.DistillTrainer"


def trainer_class(cfg: Config) -> type[FoldTrainer]:
    """The class named by ``train.trainer`` (dotted path), checked to be a ``FoldTrainer``; with
    ``train.mask_loss_weight > 0`` the default trainer becomes ``MASK_TRAINER``, with ``train.distill_teachers``
    ``DISTILL_TRAINER``, and a custom one must extend it."""
    path = cfg.train.trainer
    masks, teachers = cfg.train.mask_loss_weight > 0, bool(cfg.train.distill_teachers)
    if masks and teachers and path == DEFAULT_TRAINER:
        raise ConfigError(
            "train.mask_loss_weight and train.distill_teachers are both set, and no built-in trainer does both; "
            "set one of them (mask_loss_weight: 0 or distill_teachers: []), or name a train.trainer of your own "
            f"that extends {MASK_TRAINER} and {DISTILL_TRAINER}"
        )
    if path == DEFAULT_TRAINER:
        path = MASK_TRAINER if masks else DISTILL_TRAINER if teachers else path
    module_name, _, name = path.replace(":", ".").rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError as exc:
        raise ConfigError(
            f"train.trainer: cannot import {module_name!r} ({exc}); name a module.Class"
        ) from exc
    if not (isinstance(found, type) and issubclass(found, FoldTrainer)):
        raise ConfigError(
            f"train.trainer: {path!r} is not a FoldTrainer subclass; name one, e.g. {DEFAULT_TRAINER}"
        )
    if cfg.train.mask_loss_weight > 0 and not found.uses_masks:
        raise ConfigError(
            f"train.mask_loss_weight is {cfg.train.mask_loss_weight:g} but train.trainer {path!r} does not "
            f"train on masks; extend {MASK_TRAINER}, or set train.mask_loss_weight: 0"
        )
    if teachers and not found.uses_teachers:
        raise ConfigError(
            f"train.distill_teachers is set but train.trainer {path!r} does not learn from teachers; extend "
            f"{DISTILL_TRAINER}, or set train.distill_teachers: []"
        )
    return found


def compute_loss(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss (a function of its own so tests can inject a divergence)."""
    return criterion(logits, targets)


def _finite_params(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


class FoldTrainer:
    """Owns model, optimizer, scheduler, EMA and the fold's files; ``run()`` trains then predicts."""

    uses_masks = False  # True: batches carry the lesion ``mask`` (B, 1, H, W) beside ``image`` and ``label``
    uses_teachers = False  # True: the loss learns from ``train.distill_teachers`` (``medsg.train.distill``)

    def __init__(
        self,
        cfg: Config,
        fold: int,
        model: nn.Module,
        data: FoldData,
        fold_dir: Path,
        device: torch.device,
        dist: ddp.DistInfo | None = None,
        quiet: bool = False,
        callbacks: Sequence[TrainerCallback] = (),
    ) -> None:
        self.cfg, self.fold, self.data, self.device = cfg, fold, data, device
        self.folder = FoldFolder(Path(fold_dir), fold)
        self.dist = dist or ddp.DistInfo()
        self.quiet = quiet
        self.callbacks = list(callbacks)
        self.num_classes = len(data.class_names)
        self.model = model.to(device)
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        t = cfg.train
        self.max_epochs = t.epochs  # where fit() stops; the schedule is always t.epochs long
        self.optimizer = self.build_optimizer()
        per_rank = math.ceil(len(data.train) / self.dist.world_size)
        self.steps_per_epoch = max(1, math.ceil(per_rank / t.batch_size))
        self.scheduler = self.build_scheduler()
        self.ema = self.build_ema()
        self.amp_dtype = amp_dtype(device, t.amp, t.amp_dtype)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.criterion = self.build_criterion()
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:  # compiled for training only; evaluation runs the plain module (no recompiles)
            self.train_model = torch.compile(self.train_model)
        self.epoch = 0
        self.num_updates = 0
        self.best: dict[str, Any] = {"epoch": 0, "val_balanced_accuracy": -1.0, "val_loss": float("inf")}
        self.history: list[dict[str, float]] = []
        self.stopped_early = False
        self.val_predictions: tuple[list[str], np.ndarray, np.ndarray] | None = None  # of the last validation

    # ------------------------------------------------------------ hooks (override to change the recipe)

    @classmethod
    def build_transforms(
        cls, cfg: Config, mean: tuple[float, ...], std: tuple[float, ...], train: bool
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """A fold's MONAI pipeline (train: with the config's augmentations), for the model's mean/std.

        A class method: the data factory builds the pipelines (and the run-wide decode cache they share)
        before a trainer exists."""
        return build_transforms(
            cfg.model.img_size,
            mean,
            std,
            train=train,
            color_aug=cfg.color_aug,
            with_mask=cls.uses_masks,  # the mask union collates; the bare path lists would not
            augment=cfg.augmentations,  # data.augment, the dataset's vertical-flip rule filled in
        )

    def build_optimizer(self) -> torch.optim.Optimizer:
        """timm's optimizer with layer-wise lr decay where the model has a ``group_matcher``."""
        from timm.optim import create_optimizer_v2

        t = self.cfg.train
        try:
            return create_optimizer_v2(
                self.model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, layer_decay=t.layer_decay
            )
        except (AttributeError, NotImplementedError, KeyError) as exc:  # no group_matcher on this model
            log.warning(
                "layer decay unavailable for %s (%s); using one lr for all layers", self.cfg.model.name, exc
            )
            return create_optimizer_v2(self.model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay)

    def build_scheduler(self) -> Any:
        """timm's scheduler stepped per update (warm-up then ``train.sched``) over ``train.epochs`` epochs."""
        from timm.scheduler import create_scheduler_v2

        t = self.cfg.train
        scheduler, _ = create_scheduler_v2(
            self.optimizer,
            sched=t.sched,
            num_epochs=t.epochs,
            warmup_epochs=t.warmup_epochs,
            min_lr=t.min_lr,
            warmup_lr=min(t.lr * 1e-3, t.lr),
            step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch,
        )
        return scheduler

    def build_ema(self) -> nn.Module | None:
        """timm's ModelEmaV3 (with warm-up) when ``train.ema``, else None."""
        from timm.utils import ModelEmaV3

        t = self.cfg.train
        return ModelEmaV3(self.model, decay=t.ema_decay, use_warmup=True) if t.ema else None

    def build_criterion(self) -> nn.Module:
        """Cross-entropy with label smoothing, class-balanced weights when ``train.class_weighting``."""
        t = self.cfg.train
        weight = (
            class_weights(self.data.train_labels, self.num_classes)
            if t.class_weighting == "balanced"
            else None
        )
        return nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(self.device), label_smoothing=t.label_smoothing
        )

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """One batch's training loss (forward included); ``batch`` is the collated dict, for recipes that
        need more than images and labels (``medsg.train.mask_aux``)."""
        with autocast(self.device, self.amp_dtype):
            logits = self.train_model(images)
        return compute_loss(self.criterion, logits.float(), labels)

    def train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        epoch: int,
        step: int,
        batch: dict[str, Any] | None = None,
    ) -> float:
        """One batch: loss (stop on NaN/inf on every rank), backward, clip, step, schedule, EMA.

        Returns the batch's mean loss. Callbacks hear the end of the "forward", "backward" and "optimizer"
        phases, so a benchmark times this very step rather than a copy of it.
        """
        t = self.cfg.train
        images = images.contiguous(memory_format=self.memory_format)
        loss = self.batch_loss(images, labels, batch or {})
        value = float(loss.detach().item())  # the step's one host sync (three before): the check and the log
        bad = not math.isfinite(value)
        if self.dist.enabled:
            flag = torch.tensor([float(bad)], device=self.device)
            torch.distributed.all_reduce(flag)  # every rank stops together
            bad = bool(flag.item() > 0)
        if bad:
            raise TrainingDiverged(self.fold, epoch, step, _current_lr(self.optimizer), value)
        self._phase_end("forward")
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if t.grad_clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self._phase_end("backward")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.num_updates += 1
        self.scheduler.step_update(num_updates=self.num_updates)
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        self._phase_end("optimizer")
        return value

    def _phase_end(self, phase: str) -> None:
        for callback in self.callbacks:
            callback.on_phase_end(self, phase)

    def validate(self) -> dict[str, float]:
        """The epoch's inner-validation metrics (``HISTORY_COLUMNS``' val_*), the same on every rank; NaN
        without a validation split. Keeps the predictions: the selected epoch's calibrate the fold."""
        if self.data.val is None or len(self.data.val) == 0:
            return dict.fromkeys(HISTORY_COLUMNS[3:7], float("nan"))
        ids, y, probs = self._predict(self.eval_model, self.data.val)
        self.val_predictions = (ids, y, probs)  # saved with the checkpoint it selects: calibration data
        result = val_metrics(y, probs)
        keys = list(result)
        values = ddp.broadcast_floats([result[k] for k in keys], self.device)  # rank 0 decides for all
        return dict(zip(keys, values, strict=True))

    def on_epoch_end(self, row: dict[str, float]) -> None:
        """After an epoch is validated, recorded and saved; by default tells the callbacks."""
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)

    # ------------------------------------------------------------ paths and state

    @property
    def fold_dir(self) -> Path:
        return self.folder.path

    @property
    def last_path(self) -> Path:
        return self.folder.checkpoint("last")

    @property
    def best_path(self) -> Path:
        return self.folder.checkpoint("best")

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _state(self, with_optimizer: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "arch": self.cfg.model.name,
            "num_classes": self.num_classes,
            "class_names": list(self.data.class_names),
            "img_size": self.cfg.model.img_size,
            "fold": self.fold,
            "epoch": self.epoch,
            "num_updates": self.num_updates,
            "state_dict": self.model.state_dict(),
            "state_dict_ema": self.ema.module.state_dict() if self.ema is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "best": dict(self.best),
            "history": [dict(h) for h in self.history],
            "stopped_early": self.stopped_early,
            "selection": self.cfg.train.selection,
            "rng": capture_rng(),
            **self.extra_state(),
        }
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
            state["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
        return state

    def extra_state(self) -> dict[str, Any]:
        """What a subclass adds to every checkpoint (e.g. an auxiliary head), under keys of its own."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore ``extra_state`` on resume (parameters load in place, so the optimizer state still applies)."""

    def resume(self) -> bool:
        """Load ``checkpoint_last.pt`` when present; returns whether it did."""
        if not self.last_path.exists():
            return False
        state = load_training_checkpoint(self.last_path)
        check_checkpoint_matches(state, self.last_path, self.cfg.model.name, self.num_classes)
        try:
            self.model.load_state_dict(state["state_dict"])
            if self.ema is not None and state.get("state_dict_ema") is not None:
                self.ema.module.load_state_dict(state["state_dict_ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # another timm/torch, another recipe
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{self.last_path} cannot resume this fold ({reason}); it was saved by "
                f"another version or recipe. Go back to that one, or delete {self.fold_dir} to train the fold again"
            ) from exc
        self.epoch, self.num_updates = int(state["epoch"]), int(state["num_updates"])
        self.best, self.history = dict(state["best"]), [dict(h) for h in state["history"]]
        if self.dist.is_main:
            self._warn_best_ahead_of_record()
        self.stopped_early = bool(state.get("stopped_early", False))
        self.load_extra_state(state)
        restore_rng(state["rng"])
        log.info("fold %s: resuming after epoch %d from %s", self.fold, self.epoch, self.last_path)
        return True

    def _warn_best_ahead_of_record(self) -> None:
        """Name a published best that ``checkpoint_last.pt`` does not record: a fold killed between the two
        saves by a medsg from before the ``.next`` files (``_settle_pending`` has published or dropped those)."""
        if not self.best_path.exists():
            return
        published = load_training_checkpoint(self.best_path)["epoch"]
        if published != self.best.get("epoch"):
            log.warning(
                "fold %s: %s holds epoch %s but %s records epoch %s as the best (a kill between the two "
                "saves, by an older medsg). Resuming: if the replayed epoch does not improve again, the fold "
                "keeps those weights under the recorded epoch; delete the fold folder to train it cleanly",
                self.fold,
                self.best_path.name,
                published,
                self.last_path.name,
                self.best.get("epoch"),
            )

    # ------------------------------------------------------------ one epoch

    def _train_epoch(self) -> float:
        t, epoch = self.cfg.train, self.epoch + 1
        epoch_seed = derive_seed(self.cfg.experiment.seed, "fold", self.fold, "epoch", epoch)
        torch.manual_seed(epoch_seed)  # dropout / drop-path stream: same on resume as uninterrupted
        np.random.seed(epoch_seed)
        order = epoch_indices(
            self.data.train_labels, epoch_seed, t.sampler == "balanced", self.dist.rank, self.dist.world_size
        )
        loader = training_loader(
            self.data.train, t.batch_size, t.workers, order, epoch_seed, self.dist.rank, self.dist.world_size
        )
        show = not self.quiet and self.dist.is_main and sys.stderr.isatty()
        self.train_model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"fold {self.fold} epoch {epoch}/{t.epochs}", disable=not show, leave=False)
        for step, batch in enumerate(bar, start=1):
            images, labels = to_device(batch, self.device)
            total += self.train_step(images, labels, epoch, step, batch) * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        log.debug(
            "rank %d/%d: fold %s epoch %d trained %d steps",
            self.dist.rank,
            self.dist.world_size,
            self.fold,
            epoch,
            step,
        )
        return ddp.all_reduce_mean(total / max(count, 1), self.device)

    def _predict(
        self, model: nn.Module, dataset: Dataset, tta: bool = False
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, labels, probabilities) of ``dataset`` with the run's batch size, workers and precision; with
        ``tta`` the two-view mean (``eval.tta``: the selected model's predictions, never epoch selection)."""
        t = self.cfg.train
        return predict(model, dataset, self.device, t.batch_size, t.workers, self.amp_dtype, tta)

    def _write_history(self) -> None:
        frame = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        atomic_write_text(self.folder.history, frame.to_csv(index=False))

    def _write_val_predictions(self) -> None:
        """The inner validation probabilities of the epoch just selected: what ``calibrate`` fits T on (with
        ``eval.tta``, ``calibrate`` replaces them by the selected model's two-view means)."""
        if self.val_predictions is None:
            return
        ids, y, probs = self.val_predictions
        path = self._pending(self.fold_dir / VAL_PREDICTIONS)
        atomic_write_text(path, self._frame(ids, y, probs).to_csv(index=False))

    @staticmethod
    def _pending(path: Path) -> Path:
        """Where an improved epoch's best checkpoint and validation predictions wait until ``checkpoint_last.pt``
        records that epoch, so a kill in between never leaves a best file the resumed run does not know."""
        return path.with_name(f"{path.stem}.next{path.suffix}")

    def _commit_pending(self) -> None:
        for final in (self.best_path, self.fold_dir / VAL_PREDICTIONS):
            pending = self._pending(final)
            if pending.exists():
                os.replace(pending, final)

    def _settle_pending(self) -> None:
        """After a kill: publish the pending best files when ``checkpoint_last.pt`` recorded their epoch (the
        kill came after it), else drop them (the epoch runs again and decides again)."""
        best = self._pending(self.best_path)
        if best.exists():
            last = load_training_checkpoint(self.last_path)["epoch"] if self.last_path.exists() else 0
            if int(load_training_checkpoint(best)["epoch"]) != int(last):
                for final in (self.best_path, self.fold_dir / VAL_PREDICTIONS):
                    self._pending(final).unlink(missing_ok=True)
                return
        self._commit_pending()

    def _frame(self, ids: list[str], y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
        """The predictions.csv layout: id, fold, y_true, y_pred, p_<class>..."""
        frame = pd.DataFrame({"id": ids, "fold": self.fold, "y_true": y, "y_pred": probs.argmax(1)})
        for c, name in enumerate(self.data.class_names):
            frame[f"p_{name}"] = probs[:, c]
        return frame

    def fit(self) -> None:
        """Train the remaining epochs, saving best (and its validation predictions) as pending, history, last,
        then publishing the pending files."""
        t = self.cfg.train
        while self.epoch < self.max_epochs and not self.stopped_early:
            start = time.perf_counter()
            lr = _current_lr(self.optimizer)
            train_loss = self._train_epoch()
            self.epoch += 1
            if not _finite_params(self.model):
                raise TrainingDiverged(self.fold, self.epoch, self.steps_per_epoch, lr, float("nan"))
            row = {"epoch": self.epoch, "lr": lr, "train_loss": train_loss, **self.validate()}
            row["time_s"] = round(time.perf_counter() - start, 3)
            self.history.append(row)
            improved = is_better(row, self.best, t.selection)
            if improved:
                self.best = {
                    "epoch": self.epoch,
                    "val_balanced_accuracy": row["val_balanced_accuracy"],
                    "val_loss": row["val_loss"],
                }
            patience = t.early_stop_patience
            if t.selection == "inner_val" and patience and self.epoch - self.best["epoch"] >= patience:
                self.stopped_early = True
                log.info(
                    "fold %s: early stop after epoch %d (best %d)", self.fold, self.epoch, self.best["epoch"]
                )
            if self.dist.is_main:
                if improved:  # pending until checkpoint_last names this epoch (see _pending)
                    atomic_torch_save(self._state(with_optimizer=False), self._pending(self.best_path))
                    self._write_val_predictions()
                self._write_history()
                atomic_torch_save(self._state(with_optimizer=True), self.last_path)
                self._commit_pending()
            ddp.barrier()
            log.info(
                "fold %s epoch %d/%d lr %.2e train_loss %.4f val_loss %.4f val_bal_acc %.4f%s time %.1fs",
                self.fold,
                self.epoch,
                t.epochs,
                lr,
                train_loss,
                row["val_loss"],
                row["val_balanced_accuracy"],
                " *" if improved else "",
                row["time_s"],
            )
            self.on_epoch_end(row)

    def load_selected(self) -> nn.Module:
        """The selected weights (EMA when on) in a copy of the model, read back from ``checkpoint_best.pt``."""
        model = copy.deepcopy(self.model)
        load_exact(model, self.best_path, use_ema=self.ema is not None)  # the one inference loader
        return model

    def test(self) -> dict[str, Any]:
        """Predict the outer test fold once with the selected weights; write predictions, metrics and the
        explanations (``fold_K/explain/``, rank 0), then the DONE marker."""
        model = self.load_selected()
        ids, y, probs = self._predict(model, self.data.test, tta=self.cfg.eval.tta)
        names = self.data.class_names
        frame = self._frame(ids, y, probs)
        metrics = classification_metrics(y, probs, names)
        n_train, n_val = len(self.data.train), len(self.data.val) if self.data.val is not None else 0
        metrics.update(
            fold=self.fold,
            n_test=len(ids),
            selection=self.cfg.selection_rule,
            # the split actually drawn (groups make it differ slightly from splits.inner_val_fraction)
            n_train=n_train,
            n_val=n_val,
            inner_val_fraction_used=round(n_val / max(1, n_val + n_train), 4),
            best_epoch=int(self.best["epoch"]),
            epochs_trained=self.epoch,
            stopped_early=self.stopped_early,
            tta=self.cfg.eval.tta,  # the probabilities scored are two-view means (eval.tta)
        )
        if self.dist.is_main:
            atomic_write_text(self.folder.predictions, frame.to_csv(index=False))
            atomic_write_text(self.folder.metrics, json.dumps(metrics, indent=2, default=float))
            self.calibrate(model, ids, y, probs)
            self._explain(model, ids, probs)
            self.folder.mark_done(f"fold {self.fold} finished\n")
        ddp.barrier()
        return metrics

    def _selected_val_predictions(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray] | None:
        """(y, probs) of the inner validation split under the selected weights, or None without one.

        Read from ``val_predictions.csv`` (written with ``checkpoint_best.pt``); a fold trained before that
        file existed predicts its validation split once more with the selected model instead. With
        ``eval.tta`` the split is predicted again as two-view means, which replace the file's single-view
        probabilities: calibration, operating points and seed ensembles all read it, and must see what the test
        fold saw.
        """
        if self.data.val is None or len(self.data.val) == 0:
            return None
        path = self.fold_dir / VAL_PREDICTIONS
        if path.is_file() and not self.cfg.eval.tta:
            frame = pd.read_csv(path, **ID_CSV)
            return frame["y_true"].to_numpy(), frame[[f"p_{c}" for c in self.data.class_names]].to_numpy()
        ids, y, probs = self._predict(model, self.data.val, tta=self.cfg.eval.tta)
        if self.cfg.eval.tta:
            atomic_write_text(path, self._frame(ids, y, probs).to_csv(index=False))
        return y, probs

    def calibrate(self, model: nn.Module, ids: list[str], y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """Fit the fold's temperature, then its prior shift (``medsg.calibration``), on its inner validation
        predictions (never the test fold) and write ``calibration.json`` and ``calibrated_predictions.csv``
        (temperature only); ``predictions.csv`` stays raw."""
        val = self._selected_val_predictions(model)
        missing = (
            f"no inner validation split (selection {self.cfg.train.selection}, splits.inner_val_fraction "
            f"{self.cfg.splits.inner_val_fraction})"
        )
        no_val = f"{missing}: probabilities are left uncalibrated (T = 1.0)"
        names = self.data.class_names
        record = fold_calibration(*(val or (None, None)), names, no_val)
        val_y, val_probs = val or (None, None)
        if val_probs is not None:
            val_probs = apply_temperature(val_probs, record["temperature"])
        record[PRIOR_KEY] = prior_shift_record(
            val_y,
            val_probs,
            self.data.train_labels,
            names,
            reason=f"{missing}: no prior shift",
        )
        calibrated = apply_temperature(probs, record["temperature"])
        record.update(
            fold=self.fold,
            test_before=probability_scores(y, probs, names),
            test_after=probability_scores(y, calibrated, names),
        )
        atomic_write_text(self.fold_dir / CALIBRATION_FILE, json.dumps(record, indent=2) + "\n")
        frame = self._frame(ids, y, calibrated)
        atomic_write_text(self.fold_dir / CALIBRATED_PREDICTIONS, frame.to_csv(index=False))
        log.info(
            "fold %s: temperature %.3f (%s), prior-shift strength %.3f; test ECE %.4f -> %.4f",
            self.fold,
            record["temperature"],
            record.get("fitted_on", "not fitted"),
            record[PRIOR_KEY]["strength"],
            record["test_before"]["ece"],
            record["test_after"]["ece"],
        )
        return record

    def _explain(self, model: nn.Module, ids: list[str], probs: np.ndarray) -> None:
        """Explain the test fold with the selected model: review cases, and scores where masks exist. The maps
        are of the single view; with ``eval.tta`` the class they explain is the one the two-view mean predicts."""
        e = self.cfg.explain
        if (e.cases_per_fold == 0 and not e.localization) or self.data.test_rows is None:
            return
        cases = cases_from_manifest(
            self.data.test_rows, ids, probs, fold=self.fold, group_col=self.cfg.splits.grouping
        )
        settings = ExplainSettings(
            deletion_steps=e.deletion_steps, batch_size=min(self.cfg.train.batch_size, 16)
        )
        counts = explain_test_fold(
            model,
            self.data.test,
            cases,
            self.fold_dir / EXPLAIN_DIR,
            self.data.class_names,
            e.cases_per_fold,
            localization=e.localization,
            settings=settings,
        )
        log.info(
            "fold %s: explained %d review cases, scored %d lesion images in %.1fs",
            self.fold,
            min(e.cases_per_fold, len(ids)),
            counts["n_scored"],
            counts["seconds"],
        )

    def run(self) -> dict[str, Any]:
        """Resume if possible, train the remaining epochs, then test once; returns the fold's metrics."""
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            self._settle_pending()
        ddp.barrier()  # every rank then sees the best files checkpoint_last records
        self.resume()
        self.fit()
        if not self.best_path.exists():
            raise CheckpointError(
                f"{self.best_path} is missing although training finished; delete the fold folder"
            )
        return self.test()
