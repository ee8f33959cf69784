"""The run's evaluation protocol and training recipe in words, from its saved config and the files beside it.

A report states how its numbers were made before it shows them; these rows are that statement, and the seed
ensemble's report reuses them for its members.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsg.config import OUTER_TEST_UNUSED, TTA_TEXT, Config
from medsg.data.transforms import describe_augmentations
from medsg.report.run_data import RunData
from medsg.report.run_files import (
    UNKNOWN,
    audit_policy_text,
    dropped_text,
    grouping_description,
    manifest_ids,
    read_json_or_none,
)

FROM_SCRATCH = "none (trained from scratch)"


def protocol(run: RunData) -> dict[str, str]:
    """The evaluation protocol in words, from config.yaml ('unknown' where a key is absent).

    The audit and grouping lines also read audit.json, manifest.csv and splits.json of the run folder when
    present, so a reader sees what the data policy removed and what a group is, not only a column name.
    """
    cfg = run.config
    audit = read_json_or_none(run.run_dir / "audit.json")
    split_file = read_json_or_none(run.run_dir / "splits.json") or {}
    header = split_file.get("header") if isinstance(split_file.get("header"), dict) else None
    rows = {
        "experiment": cfg.experiment.name if cfg else run.run_dir.name,
        "images (included folds)": str(len(run.oof)),
        "classes": ", ".join(run.class_names),
        "folds included": ", ".join(map(str, run.folds)),
        "folds missing": ", ".join(map(str, run.missing)) or "none",
    }
    if cfg is None:  # a hand-made folder without config.yaml: what its files show, the rest unknown
        rows["groups kept together"] = grouping_description(header, UNKNOWN, UNKNOWN)
        rows["audit policy"] = audit_policy_text(UNKNOWN, UNKNOWN, UNKNOWN, audit)
        rows["images dropped by the audit policy"] = dropped_text(
            audit, manifest_ids(run.run_dir / "manifest.csv"), UNKNOWN
        )
        return {key: rows.get(key, UNKNOWN) for key in PROTOCOL_KEYS}
    audit_cfg = cfg.data.audit
    pretrained = cfg.pretrained_as_given
    rows |= {
        "dataset": cfg.data.adapter,
        "data folder": _path_text(cfg.root_as_given),
        "cross-validation": f"{cfg.splits.k}-fold, split seed {cfg.splits.seed}",
        "groups kept together": grouping_description(
            header,
            cfg.data.adapter,
            cfg.splits.grouping,
            audit_cfg.near_dup_threshold,
            audit_cfg.min_correlation,
        ),
        "split file": _path_text(cfg.splits.file or UNKNOWN),
        "audit policy": audit_policy_text(
            audit_cfg.conflicts, audit_cfg.near_dup_threshold, audit_cfg.min_correlation, audit
        ),
        "images dropped by the audit policy": dropped_text(
            audit, manifest_ids(run.run_dir / "manifest.csv"), audit_cfg.conflicts
        ),
        "inner validation fraction": str(cfg.splits.inner_val_fraction),
        "experiment seed": str(cfg.experiment.seed),
        "model": cfg.model.name,
        # the runner treats null and "" alike (no weights file): both mean training from scratch
        "pretrained weights": pretrained or FROM_SCRATCH,
        "pretraining": pretraining_text(pretrained, read_json_or_none(run.run_dir / "protocol.json")),
        "epochs": str(cfg.train.epochs),
        "model selection": selection_text(cfg),
        "provenance": _provenance(cfg.saved_provenance),
    }
    rows["ensemble"] = "none: one training run"
    if cfg.train.distill_teachers:  # the teachers are other runs' models: say they never saw the test fold
        rows["ensemble"] += (
            f"; distilled from {len(cfg.train.distill_teachers)} teachers, fold K taught by each one's fold K "
            "model, which was tested on exactly fold K's test images (checked before training), so no teacher "
            "saw them"
        )
    if run.ensemble:  # the data lines of its first member's report, and what averaging changes
        rows |= run.ensemble.get("protocol", {})
    return {key: rows[key] for key in PROTOCOL_KEYS}


# the protocol's lines, in the order the report shows them
PROTOCOL_KEYS = (
    "experiment",
    "dataset",
    "data folder",
    "images (included folds)",
    "classes",
    "cross-validation",
    "groups kept together",
    "split file",
    "audit policy",
    "images dropped by the audit policy",
    "inner validation fraction",
    "folds included",
    "folds missing",
    "experiment seed",
    "model",
    "pretrained weights",
    "pretraining",
    "epochs",
    "model selection",
    "ensemble",
    "provenance",
)


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def pretraining_text(pretrained: Any, protocol: dict[str, Any] | None) -> str:
    """Where the starting weights came from, and why no test image of this experiment is in them."""
    if not pretrained:
        return FROM_SCRATCH
    record = (protocol or {}).get("pretraining")
    if isinstance(record, dict):
        images = record.get("images", {})
        data = images.get("adapter") or images.get("folder") or "unknown data"
        init = record.get("init")
        start = (
            f", continuing from {init.get('weights')} (sha256 {str(init.get('sha256'))[:12]})"
            if isinstance(init, dict)
            else ""
        )
        per_fold = record.get("per_fold")
        if isinstance(per_fold, dict):
            sizes = sorted({int(r.get("images", {}).get("n") or 0) for r in per_fold.values()})
            count = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            return (
                f"self-supervised per fold, {record.get('method')}{start}: fold K starts from a backbone "
                f"({pretrained}) pretrained for {record.get('epochs')} epochs on fold K's training images of "
                f"{data} only, unlabelled ({count} images); none of them is an outer test image of fold K "
                f"(checked for folds {', '.join(per_fold)} at the start of the run)"
            )
        return (
            f"self-supervised, {record.get('method')}{start}: {record.get('epochs')} epochs on {images.get('n')} "
            f"unlabelled images of {data} (ids sha256 {str(images.get('ids_sha256'))[:12]}); none of them is an "
            "image of this experiment (checked at the start of the run)"
        )
    if Path(str(pretrained)).suffix.lower() not in WEIGHT_SUFFIXES:
        return (
            f"supervised transfer: the backbone of the final model of {pretrained} (a medsg run folder or "
            "package), with a new head; none of its training images is an image of this experiment (file "
            "contents compared at the start of the run)"
        )
    return f"a weights file ({pretrained}); its training data are not recorded by medsg"


def selection_text(cfg: Config) -> str:
    """The selection rule in words (each fold's metrics.json has its first part), and test-time augmentation
    where the run used it (``eval.tta``: it changes what was scored, not what was selected)."""
    text = f"{cfg.selection_rule}; {OUTER_TEST_UNUSED}"
    return f"{text}; test-time augmentation: {TTA_TEXT}" if cfg.eval.tta else text


def _path_text(path: Any) -> str:
    """A path as the config gave it; an absolute path of one machine shows only its last part."""
    text = str(path)
    if path == UNKNOWN or not Path(text).is_absolute():
        return text
    return f"{Path(text).name!r} (an absolute path on the machine that ran it)"


def recipe(cfg: Config | None) -> list[dict[str, str]]:
    """The training recipe as (item, value) rows from config.yaml, so a reader can repeat the run."""
    if cfg is None:
        return []
    train = cfg.train
    loss = f"cross-entropy, label smoothing {train.label_smoothing}, class weighting {train.class_weighting}"
    if train.class_weighting == "balanced":
        loss += " (inverse class frequency of the training fold)"
    if train.mask_loss_weight > 0:
        loss += (
            f"; plus {train.mask_loss_weight:g} x the lesion-mask BCE of a 1x1 head on the stride-16 stage "
            "(training folds' masks only; the head is dropped at export)"
        )
    if train.distill_teachers:
        loss = (
            f"{1 - train.distill_weight:g} x ({loss}) + {train.distill_weight:g} x T^2 x KL to the teachers' mean "
            f"softmax at T = {train.distill_temperature:g} (knowledge distillation, same augmented batch)"
        )
    rows = [
        ("model", cfg.model.name),
        ("pretrained weights", cfg.pretrained_as_given or FROM_SCRATCH),
        *(
            [
                (
                    "teachers (fold K taught by each one's fold K model)",
                    ", ".join(map(_path_text, train.distill_teachers)),
                )
            ]
            if train.distill_teachers
            else []
        ),
        ("input size", f"{cfg.model.img_size} px square"),
        ("drop path", cfg.model.drop_path),
        ("epochs", f"{train.epochs} ({train.warmup_epochs} warm-up), {train.sched} schedule"),
        ("batch size", train.batch_size),
        ("optimizer", f"{train.optimizer}, weight decay {train.weight_decay}"),
        ("learning rate", f"{train.lr} (minimum {train.min_lr})"),
        (
            "layer decay",
            "none (one learning rate for all layers)" if train.layer_decay is None else train.layer_decay,
        ),
        ("loss", loss),
        ("sampler", train.sampler),
        ("gradient clipping", "none" if train.grad_clip is None else train.grad_clip),
        ("EMA of weights", "yes" if train.ema else "no"),
        ("augmentations (training only)", describe_augmentations(cfg.augmentations, cfg.color_aug)),
    ]
    return [{"item": item, "value": str(value)} for item, value in rows]


def _provenance(value: Any) -> str:
    if isinstance(value, dict) and value:
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value) if value else UNKNOWN
