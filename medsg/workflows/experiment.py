"""Orchestration of ``medsg run``: config -> manifest -> audit -> splits -> k folds -> report.

The run folder (``<output_dir>/<name>/``) gets ``config.yaml`` (resolved, with provenance), ``audit.json``,
``manifest.csv`` (after the audit policy), ``splits.json``, ``protocol.json`` (audit settings, dropped ids,
what the groups are; all from ``medsg.workflows.prepare``) and one ``fold_K/`` per fold; see
``medsg.train.fold`` for a fold's files. Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medsg.config import (
    DEFAULT_BOOTSTRAP,
    FOLD_PLACEHOLDER,
    Config,
    config_hash,
    dump_config,
    load_config,
    load_saved_config,
    pretrained_sources,
    read_yaml,
    resolved_config,
    result_diff,
)
from medsg.core.device import resolve_device
from medsg.core.errors import ConfigError, ReportRefused
from medsg.core.io import atomic_write_text, read_json
from medsg.core.provenance import git_clean, git_hash, git_toplevel
from medsg.core.run_folder import ALL, CONFIG_FILE, RunFolder
from medsg.explain import EXPLAIN_DIR, collect_explanations, fold_explain_dirs
from medsg.report import write_report
from medsg.report.compare import write_comparison
from medsg.report.operating_points import critical_class
from medsg.train import ddp
from medsg.train.distill import check_teachers
from medsg.train.kfold import run_folds, train_final
from medsg.train.model import check_weights_fit
from medsg.train.utils import seed_everything
from medsg.workflows.prepare import ManifestFolds, prepare_data

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- run folder


# files prepare_data derives from the config and the data; a restart with a new config makes them again
DERIVED_FILES = ("audit.json", "manifest.csv", "splits.json", "protocol.json")


def save_or_check_config(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Write config.yaml on first use; later runs must match it in everything that changes results, and
    update only ``REPORT_SECTIONS`` (what the report computes and explains).

    A run with no trained fold (for example a start that failed on a data or model error) may be restarted
    with a corrected config: its config.yaml is replaced and its derived data files are removed, so the
    restart cannot reuse folds or a manifest made under the old config.
    """
    new = resolved_config(cfg)
    path = RunFolder(run_dir).config
    if path.exists():
        saved = read_yaml(path)
        diff = result_diff(saved, new)
        if diff and not RunFolder(run_dir).has_trained:
            log.warning(
                "%s has no trained fold: replacing its config.yaml (%s) and starting it again",
                run_dir,
                "; ".join(diff[:8]),
            )
            for name in DERIVED_FILES:
                (run_dir / name).unlink(missing_ok=True)
        elif diff:
            raise ConfigError(
                f"{run_dir} was started with a different config ({'; '.join(diff[:8])}) and has trained "
                "folds. Use a new experiment.name or experiment.output_dir, or delete the folder to start over."
            )
        else:
            if saved.get("provenance") != new["provenance"]:
                log.warning(
                    "resuming %s with other code versions: %s (was %s)",
                    run_dir,
                    new["provenance"],
                    saved.get("provenance"),
                )
            changed = [k for k in REPORT_SECTIONS if saved.get(k) != new.get(k)]
            if not changed:
                return saved
            # what the report computes may follow the config as it is now; training and provenance stay
            log.info(
                "%s: taking %s from the current config (no training number depends on them)", run_dir, changed
            )
            new = saved | {k: new[k] for k in changed}
    atomic_write_text(path, dump_config(new))
    return new


REPORT_SECTIONS = ("eval", "explain")  # sections a finished run may update: they change no training number


def collect_run_explanations(run_dir: Path, cfg: Config) -> None:
    """Pool the folds' explanations into ``<run_dir>/explain/`` (scores with grouped CIs, review.html)."""
    folders = fold_explain_dirs(run_dir)
    if not folders:
        return
    collect_explanations(
        folders,
        run_dir / EXPLAIN_DIR,
        f"{cfg.experiment.name}: explanations of out-of-fold test cases",
        n_bootstrap=cfg.eval.bootstrap,
        seed=cfg.experiment.seed,
        critical_class=review_critical_class(cfg, folders),
    )


def review_critical_class(cfg: Config, folders: list[Path]) -> str | None:
    """The class the review page's outcome filter starts on: the report's critical class (eval.critical_class,
    else the dataset's: malignant for BUSI, MEL for ISIC), or None."""
    names = read_json(folders[0] / "explain.json").get("class_names", [])
    return critical_class(cfg.eval.critical_class, cfg.data.adapter, names)[0]


MADE_BY = "made_by.json"  # in a report folder: which run, config, commit and tree made it


def report_origin(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """What ``made_by.json`` records: the run (name and config hash), whether every fold is in, and the code.

    The hash is of config.yaml as written (``config_hash`` skips provenance and I/O knobs), so the reports
    made before the typed reading keep their hash."""
    run = RunFolder(run_dir)
    return {
        "run_id": cfg.experiment.name,
        "config_hash": config_hash(read_yaml(run.config)),
        "complete": run.finished(cfg.splits.k),
        "run_commit": cfg.saved_provenance.get("git"),
        "report_commit": git_hash(),
        "clean_tree": git_clean(),
    }


def check_report_target(out: Path, origin: dict[str, Any], force: bool) -> None:
    """Refuse to replace another run's report, or a complete report by a partial one, unless ``force``.

    A report folder without made_by.json (made before it existed) is replaced only by a run of the same
    experiment name, read from its summary.json.
    """
    if force or not (out / "report.md").exists() and not (out / MADE_BY).exists():
        return

    made_by = out / MADE_BY
    if made_by.is_file():
        old = read_json(made_by)
    else:
        summary = out / "summary.json"
        name = read_json(summary, default={}).get("experiment")
        old = {"run_id": name, "config_hash": origin["config_hash"], "complete": True}
    why = None
    if old.get("run_id") != origin["run_id"] or old.get("config_hash") != origin["config_hash"]:
        why = f"it holds the report of another run ({old.get('run_id')}, config {str(old.get('config_hash'))[:12]})"
    elif old.get("run_commit") and origin.get("run_commit") and old["run_commit"] != origin["run_commit"]:
        # the same config run again (another commit or machine) is another run: its numbers can differ
        why = (
            f"it holds the report of the same config run at commit {str(old['run_commit'])[:10]}, and this run "
            f"started at {str(origin['run_commit'])[:10]}"
        )
    elif old.get("complete") and not origin["complete"]:
        why = "it holds the report of the complete run, and this run has unfinished folds"
    if why:
        raise ReportRefused(
            f"not writing the report into {out}: {why}. Pass --out to write it elsewhere, or --force to "
            "replace it."
        )


def check_reports_write(out: Path, force: bool = False, checkout: Path | None = None) -> None:
    """Refuse to write into the ``reports/`` of medsg's checkout (or ``checkout``) from a tree with uncommitted
    changes outside it, unless ``force``: a committed report must come from committed code (made_by.json
    names the commit)."""
    top = git_toplevel(checkout)
    if force or top is None or not Path(out).resolve().is_relative_to((top / "reports").resolve()):
        return
    if git_clean(top) is False:
        raise ReportRefused(
            f"not writing into {out}: the checkout {top} has uncommitted changes outside reports/ (see `git "
            "status`), so the result could not be traced to a commit. Commit them first, write elsewhere "
            "with --out, or pass --force."
        )


def write_run_report(run_dir: Path, report_dir: Path | None = None, force: bool = False) -> Path:
    """``medsg report``: aggregate a run folder's finished folds into summary.json and report.md/html.

    A partial run (unfinished folds) reports into ``<run_dir>/report/`` unless ``report_dir`` is given, so a
    quick try never lands in ``reports/``; any report folder records its origin in made_by.json, and
    another run's report there is not replaced without ``force``.
    """
    run_dir = Path(run_dir)
    cfg = load_saved_config(run_dir)
    origin = report_origin(run_dir, cfg)
    if report_dir is not None:
        out = Path(report_dir)
    elif origin["complete"]:
        out = Path(cfg.experiment.report_dir or Path("reports") / cfg.experiment.name)
    else:
        out = run_dir / "report"
        log.info("the run has unfinished folds: its partial report goes to %s", out)
    check_report_target(out, origin, force)
    check_reports_write(out, force)
    collect_run_explanations(run_dir, cfg)
    path = write_report(run_dir, out, n_bootstrap=cfg.eval.bootstrap, seed=cfg.experiment.seed)
    # the run's resolved config beside the numbers it made, so `medsg reproduce REPORT_DIR` can rerun a fold
    atomic_write_text(out / CONFIG_FILE, RunFolder(run_dir).config.read_text(encoding="utf-8"))
    atomic_write_text(out / MADE_BY, json.dumps(origin, indent=1) + "\n")
    log.info("report written to %s", path)
    return path


def _report_after_training(run_dir: Path, report_dir: Path) -> None:
    """The report at the end of a run. A refusal (another run's report there) is still an error, so that
    `medsg run` exits non-zero and a script notices; it says the folds are safely written and how
    `medsg report` can write the report elsewhere."""
    try:
        write_run_report(run_dir, report_dir)
    except ReportRefused as exc:
        raise ReportRefused(
            f"{exc} (the run itself is complete; those flags are `medsg report`'s: `medsg report {run_dir} "
            "--out DIR` writes its report elsewhere)"
        ) from None


# ---------------------------------------------------------------- entry points


def check_pretrained_for_folds(cfg: Config, folds: list[int | str]) -> None:
    """Each weights file the folds about to train start from (one per fold with ``{fold}``) is there and fits
    the model, before any fold trains; a fold that is not requested, or is done, needs no backbone."""
    for source, fold in pretrained_sources(cfg, folds).items():
        if not Path(source).exists() and FOLD_PLACEHOLDER not in str(cfg.model.pretrained):
            raise ConfigError(f"model.pretrained: weights file or model folder not found: {source}")
        if not Path(source).exists():
            raise ConfigError(
                f"model.pretrained: fold {fold}'s backbone not found: {source}. Pretrain it on that fold's "
                f"training images (`medsg pretrain --adapter ADAPTER --root ROOT --split SPLIT_FILE --fold {fold} "
                "--out ...`)" + (", or run the folds without --fold all" if fold == ALL else "")
            )
        if not Path(source).is_dir():
            check_weights_fit(cfg.model.name, cfg.model.img_size, source)


def run_experiment(
    cfg: Config,
    folds: list[int | str] | None = None,
    quiet: bool = False,
    report: bool = True,
    new_split_expected: bool = False,
) -> Path:
    """Train and test the requested folds (all CV folds by default); write the report once every fold is done.

    ``"all"`` among ``folds`` trains the final model on every image after the requested CV folds
    (``medsg.train.final``). ``new_split_expected``: creating the split file is the plan (the demo), so it is
    logged as INFO.
    """
    if cfg.train.deterministic:  # must be set before the first CUDA context (deterministic cuBLAS)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist = ddp.dist_info_from_env()
    device = resolve_device(cfg.train.device, dist.local_rank)
    ddp.init_distributed(dist, device)
    try:
        run_dir = cfg.run_dir.resolve()
        final = bool(folds) and ALL in folds
        cv = [f for f in folds or [] if f != ALL]
        folds = list(range(cfg.splits.k)) if not folds else sorted(set(cv))
        bad = [f for f in folds if not isinstance(f, int) or not 0 <= f < cfg.splits.k]
        if bad:
            raise ConfigError(f"--fold {bad}: splits.k is {cfg.splits.k}, so folds are 0..{cfg.splits.k - 1}")
        seed_everything(cfg.experiment.seed, cfg.train.deterministic)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_or_check_config(cfg, run_dir)
        ddp.barrier()
        # backbones first: the audit in prepare_data can take minutes
        check_pretrained_for_folds(cfg, RunFolder(run_dir).pending(folds + ([ALL] if final else [])))
        data = prepare_data(cfg, run_dir, dist, new_split_expected)
        log.info(
            "%s: %d images, %d classes %s, %d folds; running folds %s on %s%s",
            cfg.experiment.name,
            len(data.manifest),
            len(data.class_names),
            data.class_names,
            cfg.splits.k,
            folds + ([ALL] if final else []),
            device,
            f" x{dist.world_size} processes" if dist.enabled else "",
        )
        factory = ManifestFolds(cfg, data, run_dir, dist)
        if cfg.train.distill_teachers:  # every fold's teachers, before the first fold trains
            wanted = {f: set(factory.fold_ids(f)["test"]) for f in folds} | ({ALL: None} if final else {})
            check_teachers(cfg.train.distill_teachers, wanted, data.class_names)
        run_folds(cfg, folds, factory, run_dir, dist, quiet)
        if final:
            train_final(cfg, factory, run_dir, dist, quiet)
        if report and dist.is_main and folds:
            if RunFolder(run_dir).finished(cfg.splits.k):
                _report_after_training(run_dir, cfg.report_dir)
            else:
                log.info(
                    "not all %d folds are done yet; run `medsg report %s` when they are",
                    cfg.splits.k,
                    run_dir,
                )
        return run_dir
    finally:
        ddp.shutdown_distributed()


def run_from_file(
    config_path: str | Path,
    overrides: list[str] | None = None,
    folds: list[int | str] | None = None,
    quiet: bool = False,
) -> Path:
    """``medsg run``: load and check the config file, then ``run_experiment``; returns the run folder."""
    return run_experiment(load_config(config_path, overrides), folds, quiet)


def compare_run_folders(
    run_dirs: list[Path], out: Path | None = None, force: bool = False, decision: str | None = None
) -> Path:
    """``medsg compare``: paired comparison of runs on one split file, written to ``out`` (default
    ``reports/compare_<first>_<second>``); the bootstrap settings are the first run's; ``decision`` scores every
    run under one rule instead of each run's headline rule."""
    run_dirs = [Path(d) for d in run_dirs]
    saved = [load_saved_config(d, required=False) for d in run_dirs]
    first = saved[0] if saved else None
    names = [s.experiment.name if s else d.name for s, d in zip(saved, run_dirs, strict=True)]
    out = Path(out) if out else Path("reports") / ("compare_" + "_vs_".join(names))
    check_reports_write(out, force)
    path = write_comparison(
        run_dirs,
        out,
        n_bootstrap=first.eval.bootstrap if first else DEFAULT_BOOTSTRAP,
        seed=first.experiment.seed if first else 0,
        force=force,
        decision=decision,
    )
    log.info("comparison written to %s", path)
    return path


def show_config(config_path: str | Path, overrides: list[str] | None = None) -> str:
    """``medsg config``: the config a run would save (defaults filled, ``base:`` merged), without provenance.

    Paths are not checked, so a config can be read on a machine without its data.
    """
    data = resolved_config(load_config(config_path, overrides, check_paths=False))
    data.pop("provenance", None)
    return dump_config(data)


def make_splits(config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """``medsg splits``: audit the data and write the split file once (before parallel fold jobs)."""
    cfg = load_config(config_path, overrides)
    data = prepare_data(cfg, new_split_expected=True)
    sizes = [len(f["val"]) for f in data.splits]
    log.info("split file %s: %d folds, test sizes %s", cfg.split_file, len(sizes), sizes)
    return Path(cfg.split_file)


def _plural(count: object, word: str) -> str:
    return f"{count} {word}" + ("" if str(count) == "1" else "s")


def run_summary_lines(run_dir: Path) -> list[str]:
    """Three lines on a finished run from its summary.json: data and protocol, pooled metrics, per fold."""
    summary = read_json(RunFolder(run_dir).file("summary.json"))
    proto, pooled = summary["protocol"], summary["pooled"]
    ci = summary.get("bootstrap_ci", {}).get("balanced_accuracy", {})
    ci_text = f" (95% CI {ci['low']:.2f}-{ci['high']:.2f})" if {"low", "high"} <= set(ci) else ""
    per_fold = ", ".join(f"{f['balanced_accuracy']:.2f}" for f in summary["per_fold"])
    return [
        f"{proto['experiment']}: {summary['n_pooled']} images ({proto['classes']}), {proto['cross-validation']}, "
        f"{proto['model']}, {_plural(proto['epochs'], 'epoch')}",
        f"pooled out-of-fold: balanced accuracy {pooled['balanced_accuracy']:.2f}{ci_text}, "
        f"macro AUROC {pooled['macro_auroc']:.2f}, accuracy {pooled['accuracy']:.2f}",
        f"balanced accuracy per fold: {per_fold}",
    ]
