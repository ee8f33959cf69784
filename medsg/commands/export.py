"""``medsg export RUN_DIR OUT_DIR``: a finished run's models as a self-contained, checksummed package."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsg.commands.flags import add_force, add_models
from medsg.deploy import package

NAME = "export"
HELP = "write a finished run's models as a self-contained, checksummed package"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="<output_dir>/<experiment name> with every fold finished")
    parser.add_argument("out_dir", help="the package folder (replaced if it is a package already)")
    add_models(
        parser,
        ("folds", "all", "both"),
        "the fold ensemble, the final model (--fold all) or both (default: both when the final model exists)",
    )
    parser.add_argument(
        "--weights-dtype",
        choices=tuple(package.WEIGHT_DTYPES),
        default="float32",
        help="how the weights are stored: float16 halves the package (a package kept in git); they load "
        "back into float32, so predictions move by rounding only (default: float32)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        default=[],
        metavar="RUN_DIR",
        help="run folders of the same recipe with other experiment.seed values: the package is then the seed "
        "ensemble of RUN_DIR and these (folds only; see `medsg ensemble`)",
    )
    parser.add_argument("--name", default=None, help="the seed ensemble's name (default: <run>_seeds<N>)")
    add_force(parser)


def run(args: argparse.Namespace) -> int:
    from medsg.workflows.experiment import check_reports_write  # torch, MONAI: not for `medsg --help`

    check_reports_write(Path(args.out_dir), args.force)
    seeds = [Path(d) for d in args.seeds]
    out = package.export_package(
        Path(args.run_dir), Path(args.out_dir), args.models, args.weights_dtype, seeds, args.name
    )
    print(out)
    return 0
