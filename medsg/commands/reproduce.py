"""``medsg reproduce REPORT_DIR --fold K``: rerun one fold of a report from its recorded config and compare."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_fold, add_overrides, folder_arg
from medsg.workflows import reproduce

NAME = "reproduce"
HELP = "rerun one fold of a report from its recorded config and compare the metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report_dir", help="a report folder written by `medsg report` (with config.yaml)")
    add_fold(parser, "the fold to rerun", repeatable=False)
    parser.add_argument(
        "--out", type=folder_arg, default="runs/reproduce", help="where the rerun's run folder goes"
    )
    parser.add_argument(
        "--tolerance", type=float, default=None, help="absolute tolerance when the environment differs"
    )
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    """Returns 1 when the rerun's metrics differ from the report's."""
    tolerance = reproduce.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    result = reproduce.reproduce_fold(args.report_dir, args.fold, args.overrides, args.out, tolerance)
    print("\n".join(reproduce.reproduction_lines(result, tolerance)))
    return 0 if result.ok else 1
