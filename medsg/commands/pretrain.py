"""``medsg pretrain``: self-supervised pretraining (BYOL) of a timm backbone on unlabelled images."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_dataset, add_device, add_model, fold_arg, folder_arg
from medsg.core.errors import ConfigError
from medsg.workflows import pretrain

NAME = "pretrain"
HELP = "self-supervised pretraining (BYOL) of a timm backbone on unlabelled images; resumable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = pretrain.PretrainSettings()
    add_dataset(
        parser,
        required=False,
        adapter_help="read the images of a dataset (labels unused)",
        root_help="the dataset folder (with --adapter)",
    )
    parser.add_argument("--folder", default=None, help="or: every image below this folder")
    parser.add_argument(
        "--split",
        default=None,
        help="a split file of the dataset (with --fold): pretrain only on that fold's training images",
    )
    parser.add_argument(
        "--fold",
        type=fold_arg,
        default=None,
        metavar="K",
        help="with --split: the fold K whose outer test images are left out, or 'all' (every image in the file)",
    )
    parser.add_argument(
        "--init",
        default=None,
        help="start from this backbone (a weights file of --model, e.g. an earlier pretraining's "
        "backbone.safetensors) instead of random weights",
    )
    parser.add_argument(
        "--out", type=folder_arg, required=True, help="output folder; run the same command again to resume"
    )
    add_model(parser, d.model, f"any timm model name (default: {d.model})")
    parser.add_argument("--img-size", type=int, default=d.img_size)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    add_device(parser, "auto")


def run(args: argparse.Namespace) -> int:
    if (args.split is None) != (args.fold is None):
        raise ConfigError(
            "pretrain: --split and --fold go together (the split file, and the fold to pretrain for)"
        )
    items = pretrain.unlabelled_images(args.adapter, args.root, args.folder)
    source = {"adapter": args.adapter, "root": args.root, "folder": args.folder}
    if args.split is not None:
        items, chosen = pretrain.fold_training_images(items, args.split, args.fold, args.adapter)
        source |= chosen
    settings = pretrain.PretrainSettings(
        model=args.model,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    backbone = pretrain.pretrain(items, args.out, settings, source, device=args.device, init=args.init)
    print(f"backbone: {backbone}")
    return 0
