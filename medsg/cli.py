"""The ``medsg`` command: run, report, reproduce, explain, export, predict, evaluate, compare, splits, audit,
demo, bench, info.

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
from medsg.malloc import keep_freed_memory

log = logging.getLogger("medsg")

INFO_VARIANTS = ("sgformer_tiny", "sgformer_s", "sgformer_m", "sgformer_b")


def fold_arg(text: str) -> int | str:
    """``--fold`` value: a fold index, or ``all`` (the final model trained on every image)."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fold index or 'all'") from None


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and test k folds of an experiment, then write its report")
    p.add_argument("config", help="experiment YAML, e.g. experiments/busi.yaml")
    p.add_argument(
        "--fold",
        type=fold_arg,
        action="append",
        default=None,
        metavar="K",
        help="run only fold K (repeatable); 'all': the final model on every image, for a fixed number of "
        "epochs (the median of the CV folds' selected epochs); default: every CV fold",
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


def _add_predicting(p: argparse.ArgumentParser) -> None:
    """Options shared by predict and evaluate."""
    p.add_argument(
        "--models",
        choices=("folds", "all"),
        default=None,
        help="the fold ensemble or the final model (default: the ensemble when there is one)",
    )
    p.add_argument(
        "--tta", action="store_true", help="average each model over the image and its horizontal flip"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def _add_model_commands(sub: argparse._SubParsersAction, adapters: list[str]) -> None:
    """export, predict and evaluate: from cross-validation to use."""
    p = sub.add_parser(
        "export", help="write a finished run's models as a self-contained, checksummed package"
    )
    p.add_argument("run_dir", help="<output_dir>/<experiment name> with every fold finished")
    p.add_argument("out_dir", help="the package folder (replaced if it is a package already)")
    p.add_argument(
        "--models",
        choices=("folds", "all", "both"),
        default=None,
        help="the fold ensemble, the final model (--fold all) or both (default: both when the final model exists)",
    )
    _add_reports_force(p)
    p = sub.add_parser(
        "predict", help="classify new images with a run folder or a package (calibrated ensemble)"
    )
    p.add_argument("model", help="a run folder or an exported package")
    p.add_argument("inputs", nargs="+", help="image files, folders or CSV listings (a 'path' column)")
    p.add_argument("--out", default="medsg_predictions", help="output folder (default: medsg_predictions)")
    p.add_argument("--explain", action="store_true", help="write an explanation panel per image (slow)")
    _add_predicting(p)
    p = sub.add_parser(
        "evaluate", help="score a labelled external test set: metrics, CIs, overlap audit, report"
    )
    p.add_argument("model", help="a run folder or an exported package")
    p.add_argument("--adapter", required=True, choices=adapters)
    p.add_argument("--root", required=True, help="the test set's folder")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, e.g. --option subset=validation for ISIC 2018's validation layout (repeatable)",
    )
    p.add_argument("--out", default=None, help="output folder (default: evaluation_<adapter>_<root name>)")
    p.add_argument(
        "--exclude-overlap", action="store_true", help="drop test images that duplicate training ones"
    )
    _add_reports_force(p)
    _add_predicting(p)


def _add_reports_force(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="write into this checkout's reports/ even with uncommitted changes (the result names no commit)",
    )


def _options(items: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` adapter options, values parsed as YAML like ``--set``'s (so numbers and booleans keep
    their type)."""
    from medsg.config import parse_key_value

    return dict(parse_key_value(item, "--option", "key=value, e.g. subset=validation") for item in items)


def dispatch_model_command(args: argparse.Namespace) -> int:
    """export / predict / evaluate; predict returns 1 when an input was skipped."""
    from medsg.experiment import check_reports_write
    from medsg.predict import PredictOptions

    if args.command == "export":
        from medsg.package import export_package

        check_reports_write(Path(args.out_dir), args.force)
        print(export_package(Path(args.run_dir), Path(args.out_dir), args.models))
        return 0
    options = PredictOptions(
        which=args.models,
        tta=args.tta,
        explain=getattr(args, "explain", False),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    if args.command == "predict":
        from medsg.predict import run_predict

        result = run_predict(args.model, args.inputs, Path(args.out), options)
        rate = result.summary.get("images_per_second")
        kinds = ", ".join(f"{n} {kind}" for kind, n in result.flag_counts.items())
        print(
            f"{result.n_predicted} of {result.n_inputs} images predicted ({rate} images/s, calibrated "
            f"probabilities), {result.n_flagged} flagged ({kinds}; ood_reasons says why), "
            f"{result.n_skipped} skipped"
        )
        print(f"predictions: {Path(args.out) / 'predictions.csv'}")
        if result.n_skipped:
            print(
                f"medsg: {result.n_skipped} unreadable input(s) skipped, see {Path(args.out) / 'skipped.csv'}",
                file=sys.stderr,
            )
            return 1
        return 0
    from medsg.evaluate import EvaluateRequest, evaluate

    out = Path(args.out or f"evaluation_{args.adapter}_{Path(args.root).name}")
    check_reports_write(out, args.force)
    request = EvaluateRequest(args.adapter, args.root, _options(args.option), args.exclude_overlap, options)
    summary = evaluate(args.model, request, out)
    ci = summary["bootstrap_ci"]["balanced_accuracy"]
    print(
        f"{summary['n_scored']} test images scored (calibrated probabilities): balanced accuracy "
        f"{ci['point']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]; {summary['overlap']['n']} overlap the training data"
        + (" (excluded)" if summary["overlap"]["excluded"] else "")
    )
    print(f"report: {out / 'report.html'}")
    return 0


def _add_bench_common(p: argparse.ArgumentParser, config: bool = False) -> None:
    """--batch-size, --img-size and --device of the bench subcommands (``config``: defaults from the config)."""
    batch, size, device = (None, None, None) if config else (8, 224, "auto")
    p.add_argument(
        "--batch-size", type=int, default=batch, help=f"images per step (default {batch or 'config'})"
    )
    p.add_argument(
        "--img-size", type=int, default=size, help=f"input size in px (default {size or 'config'})"
    )
    p.add_argument(
        "--device", default=device, help=f"auto, cpu, cuda or cuda:N (default {device or 'config'})"
    )


def _add_bench(sub: argparse._SubParsersAction, adapters: list[str]) -> None:
    from medsg.bench import DEFAULT_COMPARE

    p = sub.add_parser(
        "bench",
        help="throughput on this machine: models (img/s, GFLOP/s, memory), data pipeline, epoch phases",
    )
    what = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    m = what.add_parser(
        "model", help="train/eval img/s, GFLOP/s and peak memory of models measured interleaved, with ratios"
    )
    m.add_argument(
        "--models", nargs="+", default=["sgformer_s"], metavar="NAME", help="timm names (default sgformer_s)"
    )
    m.add_argument(
        "--compare",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"models measured beside them (default {' '.join(DEFAULT_COMPARE)}; --compare alone: none)",
    )
    m.add_argument(
        "--reference",
        metavar="DIR",
        help="a local checkout of OliverRensu/SG-Former: its version of the first model, same weights",
    )
    m.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds, the median reported (default 3)"
    )
    m.add_argument("--steps", type=int, default=3, help="timed steps per model and round (default 3)")
    m.add_argument(
        "--memory",
        action="store_true",
        help="peak memory on CPU too, one subprocess per model (slower; on CUDA it is always measured)",
    )
    m.add_argument(
        "--matmul-size",
        type=int,
        default=2048,
        help="N of the NxN fp32 matmul behind the %% matmul columns (default 2048; 0: none)",
    )
    m.add_argument("--num-classes", type=int, default=3, help="classifier outputs (default 3)")
    m.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA, as training with train.amp")
    _add_bench_common(m)
    p = what.add_parser(
        "pipeline", help="the training data pipeline's img/s, with and without the cache, vs training img/s"
    )
    p.add_argument("--adapter", default="busi", choices=adapters, help="dataset adapter (default busi)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="a random subset of N images")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (default 0 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per setting, the last reported (default 2)")
    p.add_argument(
        "--cache", nargs="+", choices=("memory", "none"), default=["memory", "none"], help="default both"
    )
    p.add_argument("--model", default="sgformer_s", help="the model whose training img/s is compared")
    p.add_argument("--steps", type=int, default=3, help="timed training steps of the model (default 3)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA for the model")
    _add_bench_common(p)
    p = what.add_parser(
        "epoch",
        help="seconds in data loading, forward, backward, optimizer and evaluation of one epoch "
        "(a config, or the demo's synthetic setup)",
    )
    p.add_argument("--config", default=None, help="experiment YAML (default: the demo on synthetic images)")
    _add_overrides(p)
    p.add_argument("--model", default=None, help="model.name")
    p.add_argument("--workers", type=int, default=None, help="train.workers")
    p.add_argument("--steps", type=int, default=None, help="training steps timed (default: the whole epoch)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="N images (default: all; synthetic: 24)"
    )
    _add_bench_common(p, config=True)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )


def _add_pretrain(sub: argparse._SubParsersAction, adapters: list[str]) -> None:
    from medsg.pretrain import PretrainSettings

    d = PretrainSettings()
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining (BYOL) of a timm backbone on unlabelled images; resumable",
    )
    p.add_argument(
        "--adapter", choices=adapters, default=None, help="read the images of a dataset (labels unused)"
    )
    p.add_argument("--root", default=None, help="the dataset folder (with --adapter)")
    p.add_argument("--folder", default=None, help="or: every image below this folder")
    p.add_argument("--out", required=True, help="output folder; run the same command again to resume")
    p.add_argument("--model", default=d.model, help=f"any timm model name (default: {d.model})")
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


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
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default: the one in the run's config.yaml; <run_dir>/report while folds are missing)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace a report folder that holds another run's report"
    )
    _add_explain(sub)
    _add_model_commands(sub, adapter_names())
    _add_pretrain(sub, adapter_names())
    p = sub.add_parser(
        "compare", help="paired comparison of runs on the same split file: differences, CIs, McNemar"
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="two or more run folders or committed report folders; the first is the reference",
    )
    p.add_argument("--out", default=None, help="report folder (default: reports/compare_<A>_vs_<B>)")
    p.add_argument("--force", action="store_true", help="replace a folder that holds another kind of report")
    p = sub.add_parser(
        "reproduce", help="rerun one fold of a report from its recorded config and compare the metrics"
    )
    p.add_argument("report_dir", help="a report folder written by `medsg report` (with config.yaml)")
    p.add_argument("--fold", type=int, required=True, help="the fold to rerun")
    p.add_argument("--out", default="runs/reproduce", help="where the rerun's run folder goes")
    p.add_argument(
        "--tolerance", type=float, default=None, help="absolute tolerance when the environment differs"
    )
    _add_overrides(p)
    p = sub.add_parser(
        "config", help="print the resolved config (base: chain, --set overrides, defaults) and exit"
    )
    p.add_argument("config", help="experiment YAML")
    _add_overrides(p)
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
    _add_bench(sub, adapter_names())
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
        path = experiment.write_run_report(
            Path(args.run_dir), Path(args.out) if args.out else None, force=args.force
        )
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
    elif args.command in ("export", "predict", "evaluate"):
        return dispatch_model_command(args)
    elif args.command == "compare":
        print(
            experiment.compare_run_folders(
                [Path(d) for d in args.run_dirs], Path(args.out) if args.out else None, force=args.force
            )
        )
    elif args.command == "config":
        print(experiment.show_config(args.config, args.overrides), end="")
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
    elif args.command == "reproduce":
        from medsg.reproduce import DEFAULT_TOLERANCE, reproduce_fold, reproduction_lines

        tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
        result = reproduce_fold(args.report_dir, args.fold, args.overrides, args.out, tolerance)
        print("\n".join(reproduction_lines(result, tolerance)))
        return 0 if result.ok else 1
    elif args.command == "demo":
        start = time.perf_counter()
        from medsg.demo import run_demo

        result = run_demo(args.out, quick=args.quick, quiet=args.quiet)
        print(f"demo finished in {time.perf_counter() - start:.0f} s")
        print("\n".join(experiment.run_summary_lines(result.run_dir)))
        print(f"report: {result.report}")
    elif args.command == "pretrain":
        from medsg.pretrain import PretrainSettings, pretrain, unlabelled_images

        items = unlabelled_images(args.adapter, args.root, args.folder)
        settings = PretrainSettings(
            model=args.model,
            img_size=args.img_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        )
        source = {"adapter": args.adapter, "root": args.root, "folder": args.folder}
        print(f"backbone: {pretrain(items, args.out, settings, source, device=args.device)}")
    elif args.command == "bench":
        from medsg.bench import run_bench

        return run_bench(args)
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
    keep_freed_memory()  # CPU forward passes page-fault much less (medsg.malloc)
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
