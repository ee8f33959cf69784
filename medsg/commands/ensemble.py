"""``medsg ensemble RUN_DIR RUN_DIR... --out DIR``: average runs of one recipe (other seeds) into one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsg.commands.flags import add_force, folder_arg

NAME = "ensemble"
HELP = "average runs of one recipe that differ only in experiment.seed into one report (a seed ensemble)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="two or more run folders or committed report folders of one recipe, on one split file",
    )
    parser.add_argument(
        "--out",
        type=folder_arg,
        required=True,
        help="the ensemble's report folder (its name is the ensemble's)",
    )
    add_force(parser, "replace a report folder that holds another report")


def run(args: argparse.Namespace) -> int:
    from medsg.workflows.ensemble import write_ensemble_report  # pandas, torch: not for `medsg --help`

    print(write_ensemble_report([Path(d) for d in args.run_dirs], Path(args.out), force=args.force))
    return 0
