"""``medsg bench model | pipeline | epoch``: throughput tables for this machine (``medsg.bench``).

This module imports ``medsg.bench``, never the reverse: the benchmarks read the parsed arguments only.
"""

from __future__ import annotations

import argparse

from medsg import bench
from medsg.commands.flags import add_dataset, add_device, add_model, add_overrides

NAME = "bench"
HELP = "throughput on this machine: models (img/s, GFLOP/s, memory), data pipeline, epoch phases"


def add_common(parser: argparse.ArgumentParser, config: bool = False) -> None:
    """--batch-size, --img-size and --device of the bench subcommands (``config``: defaults from the config)."""
    batch, size, device = (None, None, None) if config else (8, 224, "auto")
    parser.add_argument(
        "--batch-size", type=int, default=batch, help=f"images per step (default {batch or 'config'})"
    )
    parser.add_argument(
        "--img-size", type=int, default=size, help=f"input size in px (default {size or 'config'})"
    )
    add_device(parser, device, indexed=not config)  # the config's train.device takes no index


def add_model_bench(p: argparse.ArgumentParser) -> None:
    add_model(p, ["sgformer_s"], "timm names (default sgformer_s; --models: the old spelling)", several=True)
    p.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"models measured beside them (default {' '.join(bench.DEFAULT_COMPARE)}; --compare alone: none)",
    )
    p.add_argument(
        "--reference",
        metavar="DIR",
        help="a local checkout of OliverRensu/SG-Former: its version of the first model, same weights",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds, the median reported (default 3)"
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per model and round (default 3)")
    p.add_argument(
        "--memory",
        action="store_true",
        help="peak memory on CPU too, one subprocess per model (slower; on CUDA it is always measured)",
    )
    p.add_argument(
        "--matmul-size",
        type=int,
        default=2048,
        help="N of the NxN fp32 matmul behind the %% matmul columns (default 2048; 0: none)",
    )
    p.add_argument("--num-classes", type=int, default=3, help="classifier outputs (default 3)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA, as training with train.amp")
    add_common(p)


def add_pipeline_bench(p: argparse.ArgumentParser) -> None:
    add_dataset(p, default="busi", adapter_help="dataset adapter (default busi)", root_help="dataset folder")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="a random subset of N images")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per setting, the last reported (default 2)")
    p.add_argument(
        "--cache", nargs="+", choices=("memory", "none"), default=["memory", "none"], help="default both"
    )
    add_model(p, "sgformer_s", "the model whose training img/s is compared")
    p.add_argument("--steps", type=int, default=3, help="timed training steps of the model (default 3)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA for the model")
    add_common(p)


def add_epoch_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="experiment YAML (default: the demo on synthetic images)")
    add_overrides(p)
    add_model(p, None, "model.name")
    p.add_argument("--workers", type=int, default=None, help="train.workers")
    p.add_argument("--steps", type=int, default=None, help="training steps timed (default: the whole epoch)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="N images (default: all; synthetic: 24)"
    )
    add_common(p, config=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    add_model_bench(
        what.add_parser(
            "model",
            help="train/eval img/s, GFLOP/s and peak memory of models measured interleaved, with ratios",
        )
    )
    add_pipeline_bench(
        what.add_parser(
            "pipeline",
            help="the training data pipeline's img/s, with and without the cache, vs training img/s",
        )
    )
    add_epoch_bench(
        what.add_parser(
            "epoch",
            help="seconds in data loading, forward, backward, optimizer and evaluation of one epoch "
            "(a config, or the demo's synthetic setup)",
        )
    )


def run(args: argparse.Namespace) -> int:
    return bench.run_bench(args)
