"""``medsg explain RUN_DIR``: explain a finished run's test cases again, with its own models, data and folds."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsg.commands.flags import add_fold

NAME = "explain"
HELP = (
    "significance maps, token allocation and Grad-CAM of a run's test cases: panels, "
    "scores against lesion masks, review.html"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="<output_dir>/<experiment name> of a run with finished folds")
    add_fold(parser, "only fold K (repeatable)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--cases", type=int, default=None, metavar="N", help="review cases per fold (default: config)"
    )
    which.add_argument(
        "--images",
        nargs="+",
        default=(),
        metavar="PATH",
        help="review these images (ids or paths of the run's data)",
    )
    parser.add_argument(
        "--deletion-steps", type=int, default=20, help="deletion-AUC steps (0: off; default 20)"
    )
    parser.add_argument(
        "--gradient-free-cases",
        type=int,
        default=100,
        metavar="N",
        help="lesion images also explained with Score-CAM, a fixed seeded subset (default 100; 0: off)",
    )


def run(args: argparse.Namespace) -> int:
    from medsg.workflows.explain import ExplainRequest, explain_run  # torch, MONAI: not for `medsg --help`

    request = ExplainRequest(
        folds=tuple(args.fold) if args.fold else None,
        cases_per_fold=args.cases,
        images=tuple(args.images),
        deletion_steps=args.deletion_steps,
        gradient_free_cases=args.gradient_free_cases,
    )
    result = explain_run(Path(args.run_dir), request)
    out = Path(args.run_dir) / "explain"
    print(
        f"{result['n_scored']} lesion images scored ({result['n_without_lesion']} without a lesion excluded), "
        f"{result['n_review_cases']} review cases, {result['seconds_total']:.0f} s"
    )
    if (out / "localization_summary.csv").is_file():  # only where the test images have lesion masks
        print(f"localization: {out / 'localization_summary.csv'}")
    print(f"review page: {out / 'review.html'} (open it in a browser; nothing is sent anywhere)")
    return 0
