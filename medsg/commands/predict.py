"""``medsg predict MODEL INPUTS...``: classify new images with a run folder or a package.

``add_prediction`` and ``prediction_options`` also serve ``medsg evaluate``, which predicts the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from medsg.commands.flags import add_device, add_models, folder_arg

if TYPE_CHECKING:
    from medsg.deploy.predict import PredictOptions

NAME = "predict"
HELP = "classify new images with a run folder or a package (calibrated ensemble)"


def add_prediction(parser: argparse.ArgumentParser) -> None:
    """Which models and how they predict: the flags of predict and evaluate (``PredictOptions``)."""
    add_models(
        parser,
        ("folds", "all"),
        "the fold ensemble or the final model (default: the ensemble when there is one)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average each model over the image and its horizontal flip (always on for a model trained with eval.tta)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers decoding images (default 0)"
    )
    add_device(parser, "cpu")


def prediction_options(args: argparse.Namespace) -> PredictOptions:
    """The ``PredictOptions`` of ``add_prediction``'s flags (``--explain`` where the command has it)."""
    from medsg.deploy.predict import PredictOptions  # torch, MONAI: not for `medsg --help`

    return PredictOptions(
        which=args.models,
        tta=args.tta,
        explain=getattr(args, "explain", False),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a run folder or an exported package")
    parser.add_argument("inputs", nargs="+", help="image files, folders or CSV listings (a 'path' column)")
    parser.add_argument(
        "--out",
        type=folder_arg,
        default="medsg_predictions",
        help="output folder (default: medsg_predictions)",
    )
    parser.add_argument("--explain", action="store_true", help="write an explanation panel per image (slow)")
    add_prediction(parser)


def run(args: argparse.Namespace) -> int:
    """Returns 1 when an input was skipped (unreadable), so scripts notice."""
    from medsg.deploy.predict import run_predict

    out = Path(args.out)
    result = run_predict(args.model, args.inputs, out, prediction_options(args))
    rate = result.summary.get("images_per_second")
    kinds = ", ".join(f"{n} {kind}" for kind, n in result.flag_counts.items())
    print(
        f"{result.n_predicted} of {result.n_inputs} images predicted ({rate} images/s, calibrated "
        f"probabilities), {result.n_flagged} flagged ({kinds}; ood_reasons says why), "
        f"{result.n_skipped} skipped"
    )
    print(f"predictions: {out / 'predictions.csv'}")
    if result.n_skipped:
        print(
            f"medsg: {result.n_skipped} unreadable input(s) skipped, see {out / 'skipped.csv'}",
            file=sys.stderr,
        )
        return 1
    return 0
