"""``medsg config CONFIG``: print the resolved config, to see what a run would use before it starts."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_overrides

NAME = "config"
HELP = "print the resolved config (base: chain, --set overrides, defaults) and exit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    print(experiment.show_config(args.config, args.overrides), end="")
    return 0
