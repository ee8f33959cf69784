"""``medsg demo``: synthetic BUSI-like data, a k-fold sgformer_tiny run and its report, on a CPU."""

from __future__ import annotations

import argparse
import time

from medsg import demo
from medsg.commands.flags import folder_arg

NAME = "demo"
HELP = "synthetic BUSI-like data -> k-fold sgformer_tiny run -> report (CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=folder_arg,
        default="medsg_demo",
        help="folder for data, runs and report (default: medsg_demo)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 folds x 1 epoch on fewer images (a smoke test)"
    )


def run(args: argparse.Namespace) -> int:
    from medsg.workflows import experiment  # torch, MONAI: seconds that `medsg --help` need not pay

    start = time.perf_counter()
    result = demo.run_demo(args.out, quick=args.quick, quiet=args.quiet)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print("\n".join(experiment.run_summary_lines(result.run_dir)))
    print(f"report: {result.report}")
    return 0
