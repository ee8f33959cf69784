"""``medsg evaluate MODEL --adapter A --root R``: score a labelled external test set with a run or a package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medsg.commands.flags import add_dataset, add_force, add_options, folder_arg, parse_options
from medsg.commands.predict import add_prediction, prediction_options

NAME = "evaluate"
HELP = "score a labelled external test set: metrics, CIs, overlap audit, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run folder or an exported package")
    add_dataset(parser, adapter_help="the test set's dataset adapter", root_help="the test set's folder")
    add_options(
        parser,
        "adapter option, e.g. --option subset=validation for ISIC 2018's validation layout (repeatable)",
    )
    parser.add_argument(
        "--out",
        type=folder_arg,
        default=None,
        help="output folder (default: evaluation_<adapter>_<root name>)",
    )
    parser.add_argument(
        "--exclude-overlap", action="store_true", help="drop test images that duplicate training ones"
    )
    add_force(parser)
    add_prediction(parser)


def run(args: argparse.Namespace) -> int:
    """Returns 1 when a labelled image was unreadable and skipped, as predict does."""
    from medsg.deploy.evaluate import EvaluateRequest, evaluate  # torch, MONAI: not for `medsg --help`
    from medsg.workflows.experiment import check_reports_write

    out = Path(args.out or f"evaluation_{args.adapter}_{Path(args.root).name}")
    check_reports_write(out, args.force)
    options = prediction_options(args)
    request = EvaluateRequest(
        args.adapter, args.root, parse_options(args.option), args.exclude_overlap, options
    )
    summary = evaluate(args.model, request, out)
    ci = summary["bootstrap_ci"]["balanced_accuracy"]
    print(
        f"{summary['n_scored']} test images scored (calibrated probabilities): balanced accuracy "
        f"{ci['point']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]; {summary['overlap']['n']} overlap the training data"
        + (" (excluded)" if summary["overlap"]["excluded"] else "")
    )
    print(f"report: {out / 'report.html'}")
    if summary["n_skipped"]:  # as predict does: scripts must notice that some labelled images were not scored
        print(
            f"medsg: {summary['n_skipped']} unreadable test image(s) skipped and not scored, see "
            f"{out / 'skipped.csv'}",
            file=sys.stderr,
        )
        return 1
    return 0
