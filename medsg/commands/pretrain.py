"""``medsg pretrain``: self-supervised pretraining (BYOL) of a timm backbone on unlabelled images."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_dataset, add_device, add_model, folder_arg
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
    items = pretrain.unlabelled_images(args.adapter, args.root, args.folder)
    settings = pretrain.PretrainSettings(
        model=args.model,
        img_size=args.img_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    source = {"adapter": args.adapter, "root": args.root, "folder": args.folder}
    print(f"backbone: {pretrain.pretrain(items, args.out, settings, source, device=args.device)}")
    return 0
