"""``medsg pretrain``: self-supervised pretraining of a timm backbone on unlabelled images (BYOL, via lightly).

Why BYOL. SG-Former is hierarchical: its guided attention groups a fixed number of tokens per window, so the
masked-image methods (MAE and kin) that drop tokens do not apply without rewriting the model. Joint-embedding
methods only need a pooled feature, so any timm backbone works. Of those, SimCLR needs large batches for its
negatives and DINO many epochs and crops; BYOL (Grill et al. 2020) learns from two views of one image with no
negatives, so it works at the batch sizes a CPU or one GPU affords on a few thousand images. The method's
pieces (view augmentations, projection and prediction heads, loss, momentum schedule) are lightly's (MIT).

What it writes (``OUT``, resumable: kill it and run the same command again)::

    pretrain.json            the settings, the images (count, sha256 of their ids), the dataset, the history
    checkpoint_last.pt       online and target networks, optimizer: the state after the last finished epoch
    backbone.safetensors     the online backbone without a head: set ``model.pretrained`` to this file
    images.txt               the ids of the images it saw, one per line
    history.csv              one row per epoch: loss, learning rate, momentum, seconds
    DONE                     when every epoch is finished

An epoch reseeds every RNG from (seed, epoch) and the image order from the same seed, so a resumed run draws
exactly the views an uninterrupted one would. No image of an experiment's outer test folds may be seen here:
pretrain on another dataset (BUSI from ISIC), or per fold (``--split FILE --fold K``: only fold K's training
images, for an experiment whose ``model.pretrained`` names ``.../fold_{fold}/backbone.safetensors``).
``images.txt`` lists the ids it saw, and an experiment refuses to start when one of them is an outer test image
of a fold that starts from it. ``--init`` continues from a backbone (hierarchical pretraining: a general backbone,
then the target's own unlabelled images).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medsg.config import FOLD_PLACEHOLDER, pretrained_for_fold
from medsg.core.device import torch_device
from medsg.core.errors import ConfigError, DataError
from medsg.core.io import atomic_torch_save, atomic_write_text, read_json
from medsg.core.run_folder import ALL
from medsg.data import load_manifest
from medsg.data.generic import image_files_below
from medsg.data.images import read_image
from medsg.data.splits import read_splits
from medsg.deploy.package import sha256_file
from medsg.models import create_model
from medsg.models.checkpoint import read_checkpoint, save_safetensors
from medsg.train.model import check_weights_fit
from medsg.train.utils import derive_seed, seed_everything

log = logging.getLogger(__name__)

PRETRAIN_FILE = "pretrain.json"
LAST_FILE = "checkpoint_last.pt"
BACKBONE_FILE = "backbone.safetensors"
HISTORY_FILE = "history.csv"
IMAGES_FILE = "images.txt"
METHOD = "BYOL (Grill et al. 2020) with lightly's views, heads, loss and momentum schedule"


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that changes the result; a resumed run must have the same."""

    model: str = "sgformer_tiny"
    img_size: int = 224
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3  # AdamW (timm), cosine per step after a linear warm-up
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    momentum_start: float = 0.99  # the target network's EMA momentum, cosine up to 1.0 over the run
    projection_hidden: int = 1024
    projection_dim: int = 256
    min_scale: float = 0.2  # random-resized-crop scale floor: lesions are small, lightly's 0.08 loses them
    seed: int = 0


@dataclass(frozen=True)
class UnlabelledImage:
    id: str
    path: str


def unlabelled_images(
    adapter: str | None = None,
    root: str | Path | None = None,
    folder: str | Path | None = None,
) -> list[UnlabelledImage]:
    """The images to pretrain on: a dataset through its adapter (labels ignored) or every image below a folder,
    sorted by id, so the list is reproducible."""
    if (adapter is None) == (folder is None):
        raise ConfigError("pretrain: give either --adapter with --root, or --folder (a folder of images)")
    if folder is not None:
        base = Path(folder)
        if not base.is_dir():
            raise DataError(f"--folder {base} is not a folder")
        # as predict reads a folder: DICOM by content, BUSI-style masks left out
        paths = image_files_below(base)
        items = sorted(
            (UnlabelledImage(str(p.relative_to(base)), str(p)) for p in paths), key=lambda item: item.id
        )
    else:
        if root is None:
            raise ConfigError(f"pretrain: --adapter {adapter} needs --root (the dataset folder)")
        manifest = load_manifest(adapter, root)
        items = sorted(
            (UnlabelledImage(str(i), str(p)) for i, p in zip(manifest["id"], manifest["path"], strict=True)),
            key=lambda item: item.id,
        )
    if not items:
        raise DataError(f"pretrain: no images found in {folder or root}")
    return items


def fold_training_images(
    items: Sequence[UnlabelledImage], split_file: str | Path, fold: int | str, adapter: str | None
) -> tuple[list[UnlabelledImage], dict[str, Any]]:
    """Only the split file's training images of ``fold`` (an index, or "all": every image the file names), and
    a record of the choice. Per-fold pretraining for a cross-validation: fold K's backbone then never saw one of
    fold K's outer test images, whose ids are compared as the split file names them (the adapter's ids)."""
    header, folds = read_splits(split_file)
    dataset = header.get("dataset")
    if adapter is None or (dataset and dataset != adapter):
        raise ConfigError(
            f"pretrain --split {split_file}: a split file of {dataset!r} names images by that adapter's ids; "
            f"give --adapter {dataset} and its --root"
        )
    if fold == ALL:
        wanted = {str(i) for i in [*folds[0]["train"], *folds[0]["val"]]} if folds else set()
    elif isinstance(fold, int) and 0 <= fold < len(folds):
        wanted = {str(i) for i in folds[fold]["train"]}
    else:
        raise ConfigError(f"pretrain --fold {fold}: {split_file} has folds 0 to {len(folds) - 1} (or 'all')")
    kept = [item for item in items if item.id in wanted]
    if not kept:
        raise DataError(
            f"pretrain: none of the {len(items)} images of --root is a training image of fold {fold} in "
            f"{split_file}; is it the split file of this dataset?"
        )
    if len(kept) < len(wanted):
        log.warning(
            "pretrain: %d training images of fold %s in %s are not in the dataset; pretraining on the other %d",
            len(wanted) - len(kept),
            fold,
            split_file,
            len(kept),
        )
    return kept, {"split_file": str(split_file), "split_sha256": sha256_file(Path(split_file)), "fold": fold}


def ids_digest(items: Sequence[UnlabelledImage]) -> str:
    """sha256 of the sorted ids: names the image set in pretrain.json without listing thousands of ids."""
    return hashlib.sha256("\n".join(sorted(i.id for i in items)).encode()).hexdigest()


class TwoViews(Dataset):
    """Each image decoded once (``medsg.data.images``, the one reader), kept in memory, and seen through two
    BYOL views per draw."""

    def __init__(self, items: Sequence[UnlabelledImage], transform: BYOLTransform, max_side: int) -> None:
        self.transform = transform
        self.images = []
        for item in tqdm(items, desc="decoding", unit="img", disable=None, leave=False):
            image = Image.fromarray(read_image(item.path))
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            self.images.append(image)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.transform(self.images[index])


class BYOL(nn.Module):
    """Online backbone + projection + prediction, and the momentum target (backbone + projection)."""

    def __init__(self, backbone: nn.Module, hidden: int, dim: int) -> None:
        super().__init__()
        # what a headless timm model returns: its pre-logits width (mobilenetv3: 1024 after conv_head, where
        # num_features is the 576 channels before it), num_features where it has no such layer
        width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.backbone = backbone
        self.projection = BYOLProjectionHead(width, hidden, dim)
        self.prediction = BYOLPredictionHead(dim, hidden, dim)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.criterion = NegativeCosineSimilarity()

    def update_target(self, momentum: float) -> None:
        update_momentum(self.backbone, self.target_backbone, momentum)
        update_momentum(self.projection, self.target_projection, momentum)

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        """The symmetric BYOL loss: each view's prediction against the other view's target projection."""
        views = torch.cat([view_a, view_b])
        predicted = self.prediction(self.projection(self.backbone(views)))
        with torch.no_grad():
            target = self.target_projection(self.target_backbone(views)).detach()
        p_a, p_b = predicted.chunk(2)
        t_a, t_b = target.chunk(2)
        return 0.5 * (self.criterion(p_a, t_b) + self.criterion(p_b, t_a))


def byol_transform(settings: PretrainSettings, mean: Sequence[float], std: Sequence[float]) -> BYOLTransform:
    normalize = {"mean": list(mean), "std": list(std)}
    common = {"input_size": settings.img_size, "min_scale": settings.min_scale, "normalize": normalize}
    return BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))


def _record(
    settings: PretrainSettings,
    items: Sequence[UnlabelledImage],
    source: dict[str, Any],
    init: str | Path | None,
) -> dict:
    return {
        "method": METHOD,
        "settings": asdict(settings),
        "images": {"n": len(items), "ids_sha256": ids_digest(items), **source},
        "init": {"weights": str(init), "sha256": sha256_file(Path(init))} if init else None,
        "what_to_do": f"set model.pretrained to {BACKBONE_FILE} in this folder (the head is not part of it)",
    }


def _check_resumable(out_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The saved record when ``out_dir`` holds a run with the same settings and images, else None (new)."""
    path = out_dir / PRETRAIN_FILE
    if not path.is_file():
        return None
    saved = read_json(path, advice="delete the folder to start again")
    for key in ("settings", "images", "init"):
        if saved.get(key) != record[key]:
            raise ConfigError(
                f"{path}: this folder holds a pretraining with other {key} ({saved.get(key)} vs {record[key]}); "
                "use another --out, or delete the folder to start again"
            )
    return saved


def _write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["epoch", "loss", "lr", "momentum", "seconds"])
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out_dir / HISTORY_FILE, buffer.getvalue())


def pretrain(
    items: Sequence[UnlabelledImage],
    out_dir: str | Path,
    settings: PretrainSettings,
    source: dict[str, Any] | None = None,
    device: str = "auto",
    max_steps: int | None = None,
    init: str | Path | None = None,
) -> Path:
    """Pretrain (or resume) in ``out_dir``; returns the backbone file. ``init`` names weights of
    ``settings.model`` to start from (online and target alike) instead of random ones; ``max_steps`` stops
    early (tests)."""
    out_dir = Path(out_dir)
    if init is not None:
        if not Path(init).is_file():
            raise ConfigError(f"pretrain --init: weights file not found: {init}")
        try:  # before any output: a file of another model must not be half-loaded
            check_weights_fit(settings.model, settings.img_size, init)
        except ConfigError as exc:
            words = str(exc).replace("model.pretrained:", "pretrain --init:", 1)
            raise ConfigError(words.replace("set model.name to", "set --model to")) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    record = _record(settings, items, source or {}, init)
    saved = _check_resumable(out_dir, record)
    history: list[dict[str, Any]] = (saved or {}).get("history", [])
    if (out_dir / "DONE").is_file():
        log.info("pretrain: %s is finished (DONE); nothing to do", out_dir)
        return out_dir / BACKBONE_FILE
    seed_everything(settings.seed)
    run_device = torch_device(device)
    start = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(init)}} if init else {}
    backbone = create_model(settings.model, settings.img_size, num_classes=0, **start)
    data_cfg = timm.data.resolve_data_config({}, model=backbone)
    model = BYOL(backbone, settings.projection_hidden, settings.projection_dim).to(run_device)
    optimizer = create_optimizer_v2(model, "adamw", lr=settings.lr, weight_decay=settings.weight_decay)
    data = TwoViews(items, byol_transform(settings, data_cfg["mean"], data_cfg["std"]), 2 * settings.img_size)
    steps_per_epoch = len(data) // settings.batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"pretrain: {len(data)} images make no full batch of {settings.batch_size}; lower --batch-size"
        )
    total = steps_per_epoch * settings.epochs
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total,
        warmup_t=steps_per_epoch * settings.warmup_epochs,
        warmup_lr_init=settings.lr * 1e-3,
        lr_min=settings.lr * 1e-2,
        t_in_epochs=False,
    )
    start_epoch = 0
    if saved is None or not (out_dir / LAST_FILE).is_file():
        history = []  # killed before the first epoch ended: it starts again
    else:
        state = read_checkpoint(out_dir / LAST_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        # the checkpoint's own history: pretrain.json may be an epoch behind it (a kill between the two)
        history = [dict(h) for h in state.get("history", history)][:start_epoch]
        log.info("pretrain: resuming %s after epoch %d of %d", out_dir, start_epoch, settings.epochs)
    atomic_write_text(out_dir / PRETRAIN_FILE, json.dumps(record | {"history": history}, indent=2) + "\n")
    atomic_write_text(out_dir / IMAGES_FILE, "".join(f"{item.id}\n" for item in items))
    step = start_epoch * steps_per_epoch
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=None)
    for epoch in range(start_epoch, settings.epochs):
        seed_everything(derive_seed(settings.seed, "pretrain", epoch))
        order = torch.Generator().manual_seed(derive_seed(settings.seed, "order", epoch))
        loader = DataLoader(
            data, batch_size=settings.batch_size, shuffle=True, drop_last=True, generator=order
        )
        model.train()
        start, losses = time.perf_counter(), []
        for views in loader:
            momentum = cosine_schedule(step, total, settings.momentum_start, 1.0)
            model.update_target(momentum)
            loss = model.loss(views[0].to(run_device), views[1].to(run_device))
            if not math.isfinite(loss.item()):
                raise DataError(f"pretrain: the loss became {loss.item()} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.4f}")
            if max_steps is not None and len(losses) >= max_steps:
                break
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "lr": optimizer.param_groups[0]["lr"],
                "momentum": momentum,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        # the backbone first, then the resume point: a kill between them only repeats this epoch's save
        save_safetensors(model.backbone.state_dict(), out_dir / BACKBONE_FILE)
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "history": history,
            },
            out_dir / LAST_FILE,
        )
        atomic_write_text(out_dir / PRETRAIN_FILE, json.dumps(record | {"history": history}, indent=2) + "\n")
        _write_history(out_dir, history)
        remaining = (settings.epochs - epoch - 1) * history[-1]["seconds"]
        log.info(
            "pretrain epoch %d/%d: loss %.4f, %.0f s; about %.0f min left",
            epoch + 1,
            settings.epochs,
            history[-1]["loss"],
            history[-1]["seconds"],
            remaining / 60,
        )
    bar.close()
    atomic_write_text(out_dir / "DONE", "pretraining finished\n")
    return out_dir / BACKBONE_FILE


def pretraining_source(
    weights: str | Path | None,
    adapter: str,
    ids: Sequence[str],
    test_ids: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, Any] | None:
    """What ``model.pretrained`` was pretrained on, for protocol.json, when it is a ``medsg pretrain`` backbone
    (a pretrain.json beside it); None otherwise. Refuses weights that saw an outer test image of a fold that
    starts from them: one backbone for every fold must have seen none of ``ids`` (every image is in some outer
    test fold); with ``{fold}``, fold K's backbone none of ``test_ids[K]``."""
    if not weights:
        return None
    if FOLD_PLACEHOLDER not in str(weights):
        return _pretraining_record(
            Path(weights),
            adapter,
            ids,
            "images of this experiment, which are outer "
            "test images of some fold; pretrain on another dataset, or per fold",
        )
    folds = {
        str(fold): _pretraining_record(
            Path(str(pretrained_for_fold(str(weights), fold))),
            adapter,
            test,
            f"outer test images of fold {fold}; pretrain it with --split and --fold {fold}",
        )
        for fold, test in (test_ids or {}).items()
    }
    records = {fold: record for fold, record in folds.items() if record is not None}
    if not records:
        return None
    first = next(iter(records.values()))
    return {
        "weights": str(weights),
        "method": first["method"],
        "images": first["images"],
        "epochs": first["epochs"],
        "model": first["model"],
        "init": first["init"],
        "per_fold": records,
        "overlap_with_this_experiment": "none of each fold's outer test images",
    }


def _pretraining_record(
    weights: Path, adapter: str, forbidden: Sequence[str], what: str
) -> dict[str, Any] | None:
    """One backbone's record; refuses it when it saw one of ``forbidden`` (ids of ``adapter``)."""
    folder = weights.parent
    path = folder / PRETRAIN_FILE
    if not path.is_file():
        return None
    record = read_json(path, advice="name a complete pretraining folder")
    images = record.get("images", {})
    seen = (
        set((folder / IMAGES_FILE).read_text(encoding="utf-8").split("\n"))
        if (folder / IMAGES_FILE).is_file()
        else set()
    )
    overlap = sorted(seen & set(map(str, forbidden))) if images.get("adapter") in (adapter, None) else []
    if overlap:
        raise ConfigError(
            f"model.pretrained: {weights} was pretrained on {len(overlap)} {what} (e.g. {overlap[:3]})"
        )
    settings = record.get("settings", {})
    return {
        "weights": str(weights),
        "method": record.get("method"),
        "images": images,
        "epochs": len(record.get("history", [])),
        "model": settings.get("model"),
        "init": record.get("init"),
        "overlap_with_this_experiment": 0,
    }
