"""``medsg report RUN_DIR``: aggregate the finished folds of a run folder into its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsg.commands.flags import add_force, folder_arg

NAME = "report"
HELP = "aggregate the finished folds of a run folder into a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="<output_dir>/<experiment name>")
    parser.add_argument(
        "--out",
        type=folder_arg,
        default=None,
        help="report folder (default: the one in the run's config.yaml; <run_dir>/report while folds are missing)",
    )
    add_force(parser, "replace a report folder that holds another run's report")


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    out = Path(args.out) if args.out else None
    print(experiment.write_run_report(Path(args.run_dir), out, force=args.force))
    return 0
