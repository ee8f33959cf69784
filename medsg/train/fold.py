"""One fold: fine-tune on the training part, select on the inner validation split, predict the test fold once.

The loop follows timm's transfer recipe (layer-wise lr decay, warmup + cosine per step, optional EMA, AMP on GPU)
and is written so that a run killed at any point resumes exactly: the data order of every epoch comes from a
generator seeded by (seed, fold, epoch), the global RNGs are reseeded the same way, and ``checkpoint_last.pt``
(written atomically after ``checkpoint_best.pt`` and ``history.csv``) holds everything else.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medsg.config import Config
from medsg.errors import CheckpointError, TrainingDiverged
from medsg.io import atomic_torch_save, atomic_write_text
from medsg.train import ddp
from medsg.train.utils import amp_dtype, autocast, derive_seed, get_rng_states, set_rng_states

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


@dataclass
class FoldData:
    """The three disjoint parts of one outer fold. ``val`` is None when selection is ``last_epoch`` without one.

    Each dataset yields dicts with ``image`` (3,H,W) float tensor, ``label`` int and ``id`` str.
    """

    train: Dataset
    train_labels: np.ndarray
    val: Dataset | None
    test: Dataset
    class_names: list[str]


# ---------------------------------------------------------------- model


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """A timm model by name; ``img_size`` is passed only to models that take it (e.g. ViTs, SG-Former)."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": cfg.model.drop_path}
    if cfg.model.pretrained:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cfg.model.pretrained})
    try:
        return timm.create_model(cfg.model.name, img_size=cfg.model.img_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(cfg.model.name, **kwargs)


def selection_description(cfg: Config) -> str:
    if cfg.train.selection == "last_epoch":
        return f"fixed schedule: weights after the last epoch ({cfg.train.epochs})" + (
            " (EMA)" if cfg.train.ema else ""
        )
    frac = cfg.splits.inner_val_fraction
    return (
        f"best inner-validation balanced accuracy (tie-break: lower val loss) on a grouped, stratified "
        f"{frac:.0%} split of the training folds" + (", EMA weights" if cfg.train.ema else "")
    )


# ---------------------------------------------------------------- small pieces


def compute_loss(criterion: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss (a function of its own so tests can inject a divergence)."""
    return criterion(logits, targets)


def _as_tensor(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _batch(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = _as_tensor(batch["image"]).to(device, non_blocking=True).float()
    labels = _as_tensor(batch["label"]).to(device).long().view(-1)
    return images, labels


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
):
    """A MONAI DataLoader (it seeds the dataset's random transforms from ``seed``, also in workers)."""
    from monai.data import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        generator=gen,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int, workers: int, dtype=None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, y_true, probabilities) of a whole dataset, in dataset order."""
    model.eval()
    ids: list[str] = []
    ys, probs = [], []
    for batch in make_loader(dataset, batch_size, workers, seed=0):
        images, labels = _batch(batch, device)
        with autocast(device, dtype):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        ys.append(labels.cpu())
        ids.extend(str(i) for i in batch["id"])
    out = torch.cat(probs).numpy().astype(np.float64)
    return ids, torch.cat(ys).numpy(), out / out.sum(axis=1, keepdims=True)


def val_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy and macro AUROC for the per-epoch history (cheap, no bootstrap)."""
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    with warnings.catch_warnings():  # tiny inner splits may miss a class; the NaN/partial value is recorded
        warnings.simplefilter("ignore")
        return _val_metrics(y, probs, pred, num_classes)


def _val_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(y)).item())
    try:
        if num_classes == 2:
            auroc = float(roc_auc_score(y, probs[:, 1]))
        else:
            auroc = float(
                roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(num_classes))
            )
    except ValueError:  # a class is absent from this small split
        auroc = float("nan")
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "val_macro_auroc": auroc,
    }


def is_better(row: dict[str, float], best: dict[str, float], selection: str) -> bool:
    """Selection rule: higher val balanced accuracy, ties broken by lower val loss; always for last_epoch."""
    if selection == "last_epoch":
        return True
    acc, loss = row["val_balanced_accuracy"], row["val_loss"]
    best_acc, best_loss = best["val_balanced_accuracy"], best["val_loss"]
    return acc > best_acc + 1e-12 or (abs(acc - best_acc) <= 1e-12 and loss < best_loss)


def _numpy_state_to_torch(state: dict[str, Any]) -> dict[str, Any]:
    """numpy's RNG state holds an ndarray; store it as a tensor so ``weights_only=True`` can read it back."""
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    return out


def _numpy_state_from_torch(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    name, keys, pos, has_gauss, cached = state["numpy"]
    out["numpy"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    return out


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CheckpointError(
            f"cannot read checkpoint {path} ({exc}); delete it to restart this fold from scratch"
        ) from exc


def _finite_params(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


# ---------------------------------------------------------------- the loop


class FoldTrainer:
    """Owns model, optimizer, scheduler, EMA and the fold's files; ``run()`` trains then predicts."""

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
    ) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        self.cfg, self.fold, self.data, self.fold_dir, self.device = cfg, fold, data, Path(fold_dir), device
        self.dist = dist or ddp.DistInfo()
        self.quiet = quiet
        self.num_classes = len(data.class_names)
        self.model = model.to(device)
        t = cfg.train
        try:
            self.optimizer = create_optimizer_v2(
                self.model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, layer_decay=t.layer_decay
            )
        except (AttributeError, NotImplementedError, KeyError) as exc:  # no group_matcher on this model
            log.warning(
                "layer decay unavailable for %s (%s); using one lr for all layers", cfg.model.name, exc
            )
            self.optimizer = create_optimizer_v2(
                self.model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay
            )
        per_rank = math.ceil(len(data.train) / self.dist.world_size)
        self.steps_per_epoch = max(1, math.ceil(per_rank / t.batch_size))
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer,
            sched=t.sched,
            num_epochs=t.epochs,
            warmup_epochs=t.warmup_epochs,
            min_lr=t.min_lr,
            warmup_lr=min(t.lr * 1e-3, t.lr),
            step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch,
        )
        self.ema = ModelEmaV3(self.model, decay=t.ema_decay, use_warmup=True) if t.ema else None
        self.amp_dtype = amp_dtype(device, t.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        weight = (
            class_weights(data.train_labels, self.num_classes) if t.class_weighting == "balanced" else None
        )
        self.criterion = nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(device), label_smoothing=t.label_smoothing
        )
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.epoch = 0
        self.num_updates = 0
        self.best: dict[str, Any] = {"epoch": 0, "val_balanced_accuracy": -1.0, "val_loss": float("inf")}
        self.history: list[dict[str, float]] = []
        self.stopped_early = False

    # ------------------------------------------------------------ paths and state

    @property
    def last_path(self) -> Path:
        return self.fold_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        return self.fold_dir / "checkpoint_best.pt"

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
            "rng": _numpy_state_to_torch(get_rng_states()),
        }
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
            state["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
        return state

    def resume(self) -> bool:
        """Load ``checkpoint_last.pt`` when present; returns whether it did."""
        if not self.last_path.exists():
            return False
        state = load_training_checkpoint(self.last_path)
        if state.get("num_classes") != self.num_classes or state.get("arch") != self.cfg.model.name:
            raise CheckpointError(
                f"{self.last_path} is for {state.get('arch')} with {state.get('num_classes')} classes, not "
                f"{self.cfg.model.name} with {self.num_classes}; delete the fold folder to start it again"
            )
        self.model.load_state_dict(state["state_dict"])
        if self.ema is not None and state.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(state["state_dict_ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.num_updates = int(state["epoch"]), int(state["num_updates"])
        self.best, self.history = dict(state["best"]), [dict(h) for h in state["history"]]
        self.stopped_early = bool(state.get("stopped_early", False))
        set_rng_states(_numpy_state_from_torch(state["rng"]))
        log.info("fold %d: resuming after epoch %d from %s", self.fold, self.epoch, self.last_path)
        return True

    # ------------------------------------------------------------ one epoch

    def _train_epoch(self) -> float:
        t, epoch = self.cfg.train, self.epoch + 1
        epoch_seed = derive_seed(self.cfg.experiment.seed, "fold", self.fold, "epoch", epoch)
        torch.manual_seed(epoch_seed)  # dropout / drop-path stream: same on resume as uninterrupted
        np.random.seed(epoch_seed)
        order = epoch_indices(
            self.data.train_labels, epoch_seed, t.sampler == "balanced", self.dist.rank, self.dist.world_size
        )
        loader = make_loader(self.data.train, t.batch_size, t.workers, seed=epoch_seed, sampler=order)
        show = not self.quiet and self.dist.is_main and sys.stderr.isatty()
        self.train_model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"fold {self.fold} epoch {epoch}/{t.epochs}", disable=not show, leave=False)
        for step, batch in enumerate(bar, start=1):
            images, labels = self._to_device(batch)
            with autocast(self.device, self.amp_dtype):
                logits = self.train_model(images)
            loss = compute_loss(self.criterion, logits.float(), labels)
            bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=self.device)
            if self.dist.enabled:
                torch.distributed.all_reduce(bad)  # every rank stops together
            if bad.item() > 0:
                raise TrainingDiverged(
                    self.fold, epoch, step, _current_lr(self.optimizer), float(loss.item())
                )
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if t.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
            self.num_updates += 1
            self.scheduler.step_update(num_updates=self.num_updates)
            if self.ema is not None:
                self.ema.update(self.model, step=self.num_updates)
            total += float(loss.item()) * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        log.debug(
            "rank %d/%d: fold %d epoch %d trained %d steps",
            self.dist.rank,
            self.dist.world_size,
            self.fold,
            epoch,
            step,
        )
        return ddp.all_reduce_mean(total / max(count, 1), self.device)

    def _to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return _batch(batch, self.device)

    def _validate(self) -> dict[str, float]:
        if self.data.val is None or len(self.data.val) == 0:
            return dict.fromkeys(HISTORY_COLUMNS[3:7], float("nan"))
        _, y, probs = predict(
            self.eval_model,
            self.data.val,
            self.device,
            self.cfg.train.batch_size,
            self.cfg.train.workers,
            self.amp_dtype,
        )
        result = val_metrics(y, probs)
        keys = list(result)
        values = ddp.broadcast_floats([result[k] for k in keys], self.device)  # rank 0 decides for all
        return dict(zip(keys, values, strict=True))

    def _write_history(self) -> None:
        frame = pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
        atomic_write_text(self.fold_dir / "history.csv", frame.to_csv(index=False))

    def fit(self) -> None:
        """Train the remaining epochs, saving best then history then last after each one."""
        t = self.cfg.train
        while self.epoch < t.epochs and not self.stopped_early:
            start = time.perf_counter()
            lr = _current_lr(self.optimizer)
            train_loss = self._train_epoch()
            self.epoch += 1
            if not _finite_params(self.model):
                raise TrainingDiverged(self.fold, self.epoch, self.steps_per_epoch, lr, float("nan"))
            row = {"epoch": self.epoch, "lr": lr, "train_loss": train_loss, **self._validate()}
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
                    "fold %d: early stop after epoch %d (best %d)", self.fold, self.epoch, self.best["epoch"]
                )
            if self.dist.is_main:
                if improved:
                    atomic_torch_save(self._state(with_optimizer=False), self.best_path)
                self._write_history()
                atomic_torch_save(self._state(with_optimizer=True), self.last_path)
            ddp.barrier()
            log.info(
                "fold %d epoch %d/%d lr %.2e train_loss %.4f val_loss %.4f val_bal_acc %.4f%s time %.1fs",
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

    def load_selected(self) -> nn.Module:
        """The selected weights (EMA when on) in a copy of the model, read back from ``checkpoint_best.pt``."""
        state = load_training_checkpoint(self.best_path)
        model = copy.deepcopy(self.model)
        key = (
            "state_dict_ema"
            if self.ema is not None and state.get("state_dict_ema") is not None
            else "state_dict"
        )
        model.load_state_dict(state[key])
        return model

    def test(self) -> dict[str, Any]:
        """Predict the outer test fold once with the selected weights; write predictions and metrics (rank 0)."""
        from medsg.metrics import classification_metrics

        model = self.load_selected()
        ids, y, probs = predict(
            model,
            self.data.test,
            self.device,
            self.cfg.train.batch_size,
            self.cfg.train.workers,
            self.amp_dtype,
        )
        names = self.data.class_names
        frame = pd.DataFrame({"id": ids, "fold": self.fold, "y_true": y, "y_pred": probs.argmax(1)})
        for c, name in enumerate(names):
            frame[f"p_{name}"] = probs[:, c]
        metrics = classification_metrics(y, probs, names)
        metrics.update(
            fold=self.fold,
            n_test=len(ids),
            selection=selection_description(self.cfg),
            best_epoch=int(self.best["epoch"]),
            epochs_trained=self.epoch,
            stopped_early=self.stopped_early,
        )
        if self.dist.is_main:
            import json

            atomic_write_text(self.fold_dir / "predictions.csv", frame.to_csv(index=False))
            atomic_write_text(self.fold_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
            atomic_write_text(self.fold_dir / "DONE", f"fold {self.fold} finished\n")
        ddp.barrier()
        return metrics

    def run(self) -> dict[str, Any]:
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.fit()
        if not self.best_path.exists():
            raise CheckpointError(
                f"{self.best_path} is missing although training finished; delete the fold folder"
            )
        return self.test()
