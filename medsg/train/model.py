"""The model of a fold: any timm model by name, from scratch, from a local weights file, or transferred from
another medsg model (a run folder or an exported package: supervised transfer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsg.config import Config, pretrained_for_fold
from medsg.core.errors import CheckpointError, ConfigError
from medsg.data.manifest import read_manifest
from medsg.deploy.package import FINAL, PACKAGE_FILE, Member, load_model, sha256_file
from medsg.deploy.reference import FINGERPRINTS_FILE, Fingerprints
from medsg.models import create_model
from medsg.models.checkpoint import backbone_coverage, load_checkpoint

log = logging.getLogger(__name__)


def transfer_source(folder: str | Path, arch: str) -> Member:
    """The member of a medsg run folder or package whose backbone a new model starts from: the final model
    trained on every image (``--fold all``), which saw none of the new task's images by construction."""
    bundle = load_model(folder)
    if bundle.arch != arch:
        raise ConfigError(
            f"model.pretrained: {folder} holds a {bundle.arch} model, model.name is {arch}; set model.name: "
            f"{bundle.arch} to transfer from it"
        )
    finals = [m for m in bundle.members if m.kind == FINAL]
    if not finals:
        raise ConfigError(
            f"model.pretrained: {folder} has no final model (fold_all); train one with `medsg run CONFIG "
            "--fold all`, or name one weights file of a model trained on other data instead"
        )
    return finals[0]


def model_folder_of(weights: str | Path) -> Path | None:
    """The medsg run folder or package holding a weights file (``RUN/fold_K/checkpoint_best.pt``,
    ``PACKAGE/weights/0.safetensors``), else None: such a file is a supervised model of that folder's images,
    and is checked as the folder is."""
    inner = Path(weights).parent
    outer = inner.parent
    if (
        inner.name.startswith("fold_")
        and (outer / "manifest.csv").is_file()
        and (outer / "config.yaml").is_file()
    ):
        return outer
    if inner.name == "weights" and (outer / PACKAGE_FILE).is_file():
        return outer
    return None


def check_transfer_source(source: str | Path, paths: Sequence[str], weights_file: bool = False) -> None:
    """Refuse a run folder or package that was trained on images of this experiment.

    Every image of a cross-validation is in some outer test fold, so a backbone that learnt any of their labels
    (a final model of the same data, a fold model of another split) would leak them into every fold. Images are
    compared by content (SHA-256 of the file's bytes: a package's fingerprints, a run's manifest files), so the
    same file read through another adapter is found, and two datasets that both name files ``1.png`` are not
    confused."""
    if (Path(source) / PACKAGE_FILE).is_file():  # a package; else a run folder, finished or not
        seen = {str(h) for h in Fingerprints.load(Path(source) / FINGERPRINTS_FILE).sha256 if str(h)}
    else:
        trained_on = list(read_manifest(Path(source) / "manifest.csv")["path"])
        readable = [Path(p) for p in trained_on if Path(p).is_file()]
        if not readable:
            package = "its weights file in the package" if weights_file else "that"
            raise ConfigError(
                f"model.pretrained: none of the {len(trained_on)} images {source} was trained on is readable "
                "here, so whether it saw this experiment's images cannot be checked. Make them readable at the "
                f"paths in its manifest.csv, or export it as a package (`medsg export {source} OUT`; its "
                f"fingerprints need no images) and name {package}"
            )
        if len(readable) < len(trained_on):
            log.warning(
                "model.pretrained: %d of the %d images %s was trained on are not readable here; the leakage "
                "check compares the other %d",
                len(trained_on) - len(readable),
                len(trained_on),
                source,
                len(readable),
            )
        seen = {sha256_file(p) for p in readable}
    shared = [p for p in paths if Path(p).is_file() and sha256_file(Path(p)) in seen]
    if shared:
        raise ConfigError(
            f"model.pretrained: {source} was trained on {len(shared)} image(s) of this experiment (e.g. "
            f"{[Path(p).name for p in shared[:3]]}), and every image is an outer test image of some fold: its "
            "backbone has seen their labels. Transfer from a model of other images, or pretrain without labels "
            "(`medsg pretrain`)"
        )


def build_model(cfg: Config, num_classes: int, fold: int | str | None = None) -> nn.Module:
    """The config's model for ``fold``. ``model.pretrained`` names a weights file (ImageNet, ``medsg
    pretrain``: loaded by timm through the model's pretrained_cfg; with ``{fold}`` in it, one per fold), or a
    medsg run folder or package (its final model's backbone with a new head); null trains from scratch."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": cfg.model.drop_path}
    source = pretrained_for_fold(cfg.model.pretrained, fold)
    if source and not Path(source).exists():  # a per-fold backbone not made yet (bench builds fold 0's)
        raise ConfigError(
            f"model.pretrained: fold {fold}'s weights not found: {source}; pretrain them (`medsg pretrain "
            f"--split SPLIT_FILE --fold {fold} ...`)"
        )
    if source and Path(source).is_dir():
        member = transfer_source(source, cfg.model.name)
        model = create_model(cfg.model.name, cfg.model.img_size, **kwargs)
        load_checkpoint(model, member.weights, use_ema=member.use_ema, new_head=True)
        log.info(
            "model.pretrained: backbone of %s (member %s), new %d-class head",
            source,
            member.name,
            num_classes,
        )
        return model
    if source:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": source})
    return create_model(cfg.model.name, cfg.model.img_size, **kwargs)


def check_weights_fit(name: str, img_size: int, source: str | Path) -> None:
    """Refuse a weights file that is not for ``name`` before timm loads it (once per run, before the first
    fold builds its model: ``medsg.workflows.experiment``).

    timm loads a pretrained file leniently: keys it does not find are logged and left at random, so a file of
    another model (or one that is no checkpoint at all) would train from scratch under a report that names
    it as the start. The file is read safely (``weights_only``) and must name at least half of the model's
    backbone entries (``backbone_coverage``: by name, so the resizing timm may do is not refused). The torch
    random state is kept, so the model built next initialises exactly as it did without this check."""
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random init must not move the run's seed stream
            found, wanted = backbone_coverage(
                create_model(name, img_size), source
            )  # the head is not compared
    except CheckpointError as exc:
        where = "" if str(source) in str(exc) else f"{source}: "
        raise ConfigError(f"model.pretrained: {where}{exc}") from None
    if found * 2 < wanted:
        raise ConfigError(
            f"model.pretrained: {source} names {found} of the {wanted} backbone entries of {name}, so it is not "
            f"a checkpoint of this architecture; set model.name to the file's model, or name a file of {name}"
        )
