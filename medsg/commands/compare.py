"""``medsg compare RUN_DIR RUN_DIR...``: paired comparison of runs made on the same split file."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsg.calibration import DECISIONS
from medsg.commands.flags import add_force, folder_arg

NAME = "compare"
HELP = "paired comparison of runs on the same split file: differences, CIs, McNemar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="two or more run folders or committed report folders; the first is the reference",
    )
    parser.add_argument(
        "--out", type=folder_arg, default=None, help="report folder (default: reports/compare_<A>_vs_<B>)"
    )
    parser.add_argument(
        "--decision",
        choices=DECISIONS,
        default=None,
        help="score every run under this rule (default: each run under its own eval.decision): compares models "
        "rather than packages",
    )
    add_force(parser, "replace a folder that holds another kind of report")


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    out = Path(args.out) if args.out else None
    paths = [Path(d) for d in args.run_dirs]
    print(experiment.compare_run_folders(paths, out, force=args.force, decision=args.decision))
    return 0
