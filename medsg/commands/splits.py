"""``medsg splits CONFIG``: write an experiment's split file once, before fold jobs run in parallel."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_overrides

NAME = "splits"
HELP = "write the split file of an experiment once (before parallel fold jobs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    print(experiment.make_splits(args.config, args.overrides))
    return 0
