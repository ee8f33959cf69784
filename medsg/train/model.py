"""The model of a fold: any timm model by name, from scratch, from a local weights file, or transferred from
another medsg model (a run folder or an exported package: supervised transfer)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from medsg.config import Config
from medsg.core.errors import ConfigError
from medsg.deploy.package import FINAL, Member, load_model
from medsg.models import create_model
from medsg.models.checkpoint import load_checkpoint

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
            "--fold all`, or name one weights file (e.g. fold_0/checkpoint_best.pt) instead"
        )
    return finals[0]


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The config's model. ``model.pretrained`` names a weights file (ImageNet, ``medsg pretrain``: loaded by
    timm through the model's pretrained_cfg), or a medsg run folder or package (its final model's backbone
    with a new head); null trains from scratch."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_path_rate": cfg.model.drop_path}
    source = cfg.model.pretrained
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
