"""The ``medsg`` command: run, report, explain, splits, audit, demo, info.

Errors a user can cause (``MedsgError``, or a missing file they named) print one line ``medsg: error: ...``
and exit with status 2, also when a library wrapped them (MONAI raises ``RuntimeError("applying transform ...")``
from the error of a transform); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medsg.errors import MedsgError

log = logging.getLogger("medsg")

INFO_VARIANTS = ("sgformer_tiny", "sgformer_s", "sgformer_m", "sgformer_b")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and test k folds of an experiment, then write its report")
    p.add_argument("config", help="experiment YAML, e.g. experiments/busi.yaml")
    p.add_argument(
        "--fold",
        type=int,
        action="append",
        default=None,
        metavar="K",
        help="run only fold K (repeatable); default: all folds",
    )
    _add_overrides(p)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="significance maps, token allocation and Grad-CAM of a run's test cases: panels, "
        "scores against lesion masks, review.html",
    )
    p.add_argument("run_dir", help="<output_dir>/<experiment name> of a run with finished folds")
    p.add_argument(
        "--fold", type=int, action="append", default=None, metavar="K", help="only fold K (repeatable)"
    )
    which = p.add_mutually_exclusive_group()
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
    p.add_argument("--deletion-steps", type=int, default=20, help="deletion-AUC steps (0: off; default 20)")
    p.add_argument(
        "--gradient-free-cases",
        type=int,
        default=100,
        metavar="N",
        help="lesion images also explained with Score-CAM, a fixed seeded subset (default 100; 0: off)",
    )


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``medsg`` argument parser with its subcommands."""
    from medsg.data.manifest import adapter_names

    parser = argparse.ArgumentParser(
        prog="medsg", description="Transfer learning for medical images with SG-Former."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    p = sub.add_parser("report", help="aggregate the finished folds of a run folder into a report")
    p.add_argument("run_dir", help="<output_dir>/<experiment name>")
    p.add_argument("--out", default=None, help="report folder (default: the one in the run's config.yaml)")
    _add_explain(sub)
    p = sub.add_parser(
        "splits", help="write the split file of an experiment once (before parallel fold jobs)"
    )
    p.add_argument("config", help="experiment YAML")
    _add_overrides(p)
    p = sub.add_parser("audit", help="check a dataset: unreadable files, duplicates, label conflicts")
    p.add_argument("--adapter", required=True, choices=adapter_names())
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p = sub.add_parser("demo", help="synthetic BUSI-like data -> k-fold sgformer_tiny run -> report (CPU)")
    p.add_argument(
        "--out", default="medsg_demo", help="folder for data, runs and report (default: medsg_demo)"
    )
    p.add_argument("--quick", action="store_true", help="2 folds x 1 epoch on fewer images (a smoke test)")
    sub.add_parser(
        "info", help="registered SG-Former variants, parameter counts and a forward pass (smoke test)"
    )
    return parser


def cmd_info() -> int:
    """Print each variant's parameter count and the output shape of one 224 px forward pass."""
    import timm
    import torch

    import medsg

    print(f"medsg {medsg.__version__}, torch {torch.__version__}, timm {timm.__version__}")
    for name in INFO_VARIANTS:
        if name not in timm.list_models(name):
            print(f"{name:15s} not registered")
            continue
        model = timm.create_model(name, num_classes=3, pretrained=False).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with torch.no_grad():
            shape = tuple(model(torch.zeros(1, 3, 224, 224)).shape)
        print(f"{name:15s} {params:7.2f} M params   forward (1,3,224,224) -> {shape}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns the exit status."""
    from medsg import experiment

    if args.command == "run":
        run_dir = experiment.run_from_file(args.config, args.overrides, args.fold, quiet=args.quiet)
        print(f"run folder: {run_dir}")
    elif args.command == "report":
        path = experiment.write_run_report(Path(args.run_dir), Path(args.out) if args.out else None)
        print(path)
    elif args.command == "explain":
        from medsg.explain_run import ExplainRequest, explain_run

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
        print(f"localization: {out / 'localization_summary.csv'}")
        print(f"review page: {out / 'review.html'} (open it in a browser; nothing is sent anywhere)")
    elif args.command == "splits":
        print(experiment.make_splits(args.config, args.overrides))
    elif args.command == "audit":  # errors (a missing root, a bad CSV) raise like every other command's
        from medsg.data import load_manifest
        from medsg.data.audit import audit_manifest, summarize, write_audit

        manifest = load_manifest(args.adapter, args.root)
        report = audit_manifest(manifest, progress=not args.quiet and sys.stderr.isatty())
        print(summarize(report))
        if args.out:
            write_audit(report, args.out)
            print(f"report written to {args.out}")
    elif args.command == "demo":
        start = time.perf_counter()
        result = experiment.run_demo(args.out, quick=args.quick, quiet=args.quiet)
        print(f"demo finished in {time.perf_counter() - start:.0f} s")
        print("\n".join(experiment.run_summary_lines(result.run_dir)))
        print(f"report: {result.report}")
    elif args.command == "info":
        return cmd_info()
    return 0


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if not debug:
        for noisy in ("PIL", "matplotlib", "monai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


USER_ERRORS = (MedsgError, FileNotFoundError)


def find_user_error(exc: BaseException) -> BaseException | None:
    """``exc`` or the first error in its ``__cause__`` / ``__context__`` chain that a user can fix, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(exc: BaseException) -> str:
    """The message on one line, whatever whitespace it holds; the exception type when it has no message."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medsg`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    try:
        return dispatch(args)
    except Exception as exc:
        user_error = find_user_error(exc)
        if args.debug or user_error is None:
            raise
        print(f"medsg: error: {one_line(user_error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsg: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
