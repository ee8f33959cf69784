"""``medsg run CONFIG``: train and test the k folds of an experiment (or some, or the final model), then report."""

from __future__ import annotations

import argparse

from medsg.commands.flags import add_fold, add_overrides

NAME = "run"
HELP = "train and test k folds of an experiment, then write its report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML, e.g. experiments/busi.yaml")
    add_fold(
        parser,
        "run only fold K (repeatable); 'all': the final model on every image, for a fixed number of "
        "epochs (the median of the CV folds' selected epochs); default: every CV fold",
        final=True,
    )
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    run_dir = experiment.run_from_file(args.config, args.overrides, args.fold, quiet=args.quiet)
    print(f"run folder: {run_dir}")
    return 0
