"""``medsg bench epoch``: where one epoch's time goes, in ``FoldTrainer.train_step`` timed phase by phase."""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsg.bench.measure import device_words, format_table, sync

if TYPE_CHECKING:  # pydantic on use only: every `medsg` command imports medsg.bench for its parser
    import torch
    from torch.utils.data import Dataset

    from medsg.config import Config
    from medsg.train.fold import FoldTrainer

PHASES = ("data", "forward", "backward", "optimizer", "evaluate")


class PhaseLaps:
    """A ``TrainerCallback`` (duck-typed: this module stays importable without torch) that times the phases
    of ``FoldTrainer.train_step`` as consecutive laps of one clock, synchronising the device at each."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.mark = 0.0

    def start(self) -> float:
        sync(self.device)
        self.mark = time.perf_counter()
        return self.mark

    def lap(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.phases[phase] += now - self.mark
        self.mark = now

    def on_phase_end(self, trainer: FoldTrainer, phase: str) -> None:
        self.lap(phase)

    def on_epoch_end(self, trainer: FoldTrainer, row: dict[str, float]) -> None:
        """Not used: the benchmark times steps, not epochs."""


def epoch_breakdown(
    cfg: Config, steps: int | None = None, limit: int | None = None, warmup: int = 1
) -> dict[str, Any]:
    """Seconds per phase of one training epoch (``steps`` batches, default all) and its validation pass.

    Mirrors a fold: ``limit`` images of the config's data (default all), ``splits.inner_val_fraction`` of them
    for validation, the config's pipelines, cache (filled before timing; a disk cache in a temporary folder),
    model, loader and ``FoldTrainer`` (optimizer, scheduler, EMA, loss, precision). ``warmup`` steps run
    first, untimed, then one step and one evaluation batch at each other batch size the timed part will see
    (``_warm_up``). The phases are consecutive laps of one clock, so they sum to ``total_s``.
    """
    import numpy as np
    import timm.data

    from medsg.core.device import resolve_device
    from medsg.data import class_names, load_manifest
    from medsg.data.dataset import build_dataset, manifest_to_records
    from medsg.train.evaluate import predict, val_metrics
    from medsg.train.fold import trainer_class
    from medsg.train.loader import FoldData, epoch_indices, to_device, training_loader
    from medsg.train.model import build_model
    from medsg.train.utils import seed_everything

    t = cfg.train
    device = resolve_device(t.device)
    seed_everything(cfg.experiment.seed, t.deterministic)
    df = load_manifest(cfg.data.adapter, cfg.data.root, **cfg.data.options)
    df = df.sample(n=min(limit or len(df), len(df)), random_state=cfg.experiment.seed).reset_index(drop=True)
    fraction = cfg.splits.inner_val_fraction
    n_val = min(len(df) - 1, max(1, round(fraction * len(df)))) if fraction > 0 else 0
    names = class_names(cfg.data.adapter, cfg.data.root, **cfg.data.options)
    model = build_model(cfg, num_classes=len(names), fold=0)  # a per-fold backbone: fold 0's
    data_cfg = timm.data.resolve_data_config({}, model=model)
    recipe = trainer_class(cfg)  # the config's trainer: its pipelines, its loss, its step
    with tempfile.TemporaryDirectory(prefix="medsg_bench_") as tmp:

        def dataset(rows: Any, train: bool) -> Any:
            records = manifest_to_records(rows, with_masks=recipe.uses_masks)
            mean, std = tuple(data_cfg["mean"]), tuple(data_cfg["std"])
            transform = recipe.build_transforms(cfg, mean, std, train)  # the run's own pipelines
            ds = build_dataset(records, transform, cfg.data.cache, Path(tmp) / "cache", t.workers)
            if cfg.data.cache == "disk":  # fill it: later epochs of a run read it
                for i in range(len(ds)):
                    ds[i]
            return ds

        fill = time.perf_counter()
        train_rows = df.iloc[n_val:].reset_index(drop=True)
        train_labels = train_rows["label"].to_numpy(dtype=np.int64)
        val = dataset(df.iloc[:n_val], False) if n_val else None
        data = FoldData(dataset(train_rows, True), train_labels, val, None, names)
        fill = time.perf_counter() - fill
        trainer = recipe(cfg, 0, model, data, Path(tmp) / "fold_0", device, quiet=True)
        warm = time.perf_counter()
        _warm_up(trainer, data.train, val, warmup, steps, device)
        sync(device)
        warm = time.perf_counter() - warm
        order = epoch_indices(train_labels, cfg.experiment.seed, t.sampler == "balanced")
        loader = training_loader(data.train, t.batch_size, t.workers, order, cfg.experiment.seed)
        laps = PhaseLaps(device)
        trainer.callbacks.append(laps)  # after the warm-up: only the measured steps are timed
        trainer.train_model.train()  # the warm-up ends in evaluation: time training steps in training mode
        start = laps.start()
        n_steps = n_images = 0
        for batch in itertools.islice(loader, steps):
            images, labels = to_device(batch, device)
            laps.lap("data")
            # laps forward / backward / optimizer itself
            trainer.train_step(images, labels, 1, n_steps, batch)
            n_steps, n_images = n_steps + 1, n_images + len(labels)
        laps.lap("data")  # the loader's end (and its workers' shut-down)
        if val is not None:
            _, y, probs = predict(trainer.eval_model, val, device, t.batch_size, t.workers, trainer.amp_dtype)
            val_metrics(y, probs)
        laps.lap("evaluate")
        phases = laps.phases
        total = time.perf_counter() - start
    return {
        "model": cfg.model.name,
        "device": device_words(device),
        "batch_size": t.batch_size,
        "img_size": cfg.model.img_size,
        "cache": cfg.data.cache,
        "cache_fill_s": fill,
        "steps": n_steps,
        "steps_per_epoch": trainer.steps_per_epoch,
        "warmup_steps": warmup,
        "warmup_s": warm,
        "n_train_images": n_images,
        "n_val_images": n_val,
        "phases_s": phases,
        "total_s": total,
    }


def _warm_up(
    trainer: FoldTrainer,
    train: Dataset,
    val: Dataset | None,
    steps: int,
    timed_steps: int | None,
    device: torch.device,
) -> None:
    """``steps`` training steps on full batches, then one on the epoch's last, smaller batch (if it is timed) and
    one evaluation batch of each size the validation pass will see, all untimed.

    A GPU pays once per new batch shape (kernel and library plans; on an H100 about 8 s for sgformer_s's first
    training step at a new batch size, 1-2 s for an evaluation), so without this a short timed epoch would
    report that one-off cost as the steady step time. On a CPU it costs a few steps.
    """
    from torch.utils.data import Subset

    from medsg.train.evaluate import predict
    from medsg.train.loader import make_loader, to_device

    batch_size = trainer.cfg.train.batch_size
    trainer.train_model.train()
    for batch in itertools.islice(make_loader(train, batch_size, 0, seed=0), steps):
        trainer.train_step(*to_device(batch, device), 1, 0, batch)
    last = len(train) % batch_size
    if last and (timed_steps is None or timed_steps >= trainer.steps_per_epoch):
        batch = next(iter(make_loader(Subset(train, range(last)), last, 0, seed=0)))
        trainer.train_step(*to_device(batch, device), 1, 0, batch)
    if val is not None:
        sizes = {min(batch_size, len(val)), len(val) % batch_size} - {0}
        for size in sorted(sizes):
            subset = Subset(val, range(size))
            predict(trainer.eval_model, subset, device, batch_size, 0, trainer.amp_dtype)


def epoch_config(args: argparse.Namespace, workdir: Path) -> Config:
    """``--config`` (with ``--set`` and the shortcut flags), or the demo config on synthetic BUSI images."""
    from medsg.config import config_from_dict, load_config
    from medsg.demo import demo_config, make_synthetic_busi

    shortcuts = {"model.name": args.model, "model.img_size": args.img_size, "train.device": args.device}
    shortcuts |= {"train.batch_size": args.batch_size, "train.workers": args.workers}
    overrides = [*args.overrides, *(f"{k}={v}" for k, v in shortcuts.items() if v is not None)]
    if args.config:
        return load_config(args.config, overrides)
    make_synthetic_busi(workdir / "data", n_per_class=math.ceil((args.limit or 24) / 3), size=96, seed=0)
    raw = demo_config(workdir).model_dump(mode="json")
    return config_from_dict(raw, overrides, source="medsg/configs/demo.yaml (synthetic)", check_paths=False)


def run_epoch(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="medsg_bench_data_") as workdir:
        cfg = epoch_config(args, Path(workdir))
        r = epoch_breakdown(cfg, args.steps, args.limit, args.warmup)
    source = args.config or "synthetic BUSI images (demo config)"
    cache = f"cache {r['cache']}"
    if r["cache"] != "none":
        cache += f" (filled in {r['cache_fill_s']:.1f} s, not counted)"
    print(
        f"Epoch breakdown: {r['model']} on {source}, {r['device']}, batch {r['batch_size']}, {r['img_size']} px: "
        f"{r['steps']} of {r['steps_per_epoch']} training steps ({r['n_train_images']} images, after "
        f"{r['warmup_steps']} untimed warm-up step(s)), validation on {r['n_val_images']} images; {cache}"
    )
    print(
        f"warm-up, not counted: {r['warmup_s']:.1f} s (those steps, then the first use of each batch size the "
        "epoch and its validation see, which a GPU pays once per shape)"
    )
    total, steps = r["total_s"], max(r["steps"], 1)
    rows = []
    for phase, s in r["phases_s"].items():
        per_step = "-" if phase == "evaluate" else f"{1000 * s / steps:.1f}"
        rows.append([phase, f"{s:.3f}", f"{100 * s / total:.1f}%", per_step])
    rows.append(["total", f"{total:.3f}", "100%", ""])
    print(format_table(["phase", "seconds", "share", "ms/step"], rows))
    train_s = total - r["phases_s"]["evaluate"]
    print(f"training: {r['n_train_images'] / train_s:.2f} img/s including data loading")
    return 0
