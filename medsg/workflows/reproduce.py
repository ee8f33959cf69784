"""``medsg reproduce REPORT_DIR --fold K``: rerun one fold of a committed report and compare its metrics.

A report folder keeps the run's resolved config (``config.yaml``, with the commit, package versions, threads
and device it ran on) and every fold's metrics (``summary.json``). Rerunning a fold from that config must give
the same numbers to the last digit with the same code, the same kind of machine and the same thread count:
training is deterministic. Anything else (another commit, torch version, thread count or device) changes the
float32 kernels, and SG-Former's guided blocks sort tokens by significance, so a tiny change can move a whole
epoch: then the numbers only agree within a tolerance, and the difference is named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsg.config import config_from_dict, read_yaml
from medsg.core.errors import ConfigError
from medsg.core.io import atomic_write_text, read_json
from medsg.core.provenance import git_same_code, provenance
from medsg.core.run_folder import RunFolder
from medsg.report.aggregate import ENSEMBLE_FILE
from medsg.workflows.experiment import run_experiment

COMPARED = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece", "brier", "log_loss")
DEFAULT_TOLERANCE = 0.05  # absolute, on every compared metric, when the environment differs
REPRODUCE_FILE = "reproduce.json"
# the recorded provenance that can change float32 results: versions, threads, the CPU (model, the ISA torch
# dispatches to, its vector flags) and the accelerator
ENVIRONMENT_KEYS = (
    "medsg",
    "torch",
    "timm",
    "monai",
    "numpy",
    "pillow",
    "threads",
    "machine",
    "cpu",
    "cpu_capability",
    "cpu_simd",
    "accelerator",
)


@dataclass(frozen=True)
class Reproduction:
    """What ``medsg reproduce`` found: ``verdict`` is "exact", "within tolerance" or "differs"."""

    verdict: str
    fold: int
    rows: list[dict[str, Any]]  # metric, committed, reproduced, difference
    environment: list[str]  # what differs from the recorded run ("" when nothing)
    run_dir: Path

    @property
    def ok(self) -> bool:
        return self.verdict != "differs"


def read_report(report_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run's saved config, summary.json) of a report folder, or a ConfigError saying what is missing."""
    cfg_path, summary_path = RunFolder(report_dir).config, report_dir / "summary.json"
    for path in (cfg_path, summary_path):
        if not path.is_file():
            raise ConfigError(
                f"{path} not found: `medsg reproduce` needs a report folder written by `medsg report` "
                "(reports made before reports kept their config.yaml cannot be rerun this way)"
            )
    ensemble = read_json(report_dir / ENSEMBLE_FILE, default=None)
    if ensemble is not None:
        members = ", ".join(str(m.get("path")) for m in ensemble.get("members", []))
        raise ConfigError(
            f"{report_dir} is a seed ensemble ({ENSEMBLE_FILE}): no single run made it; reproduce a fold of one "
            f"of its members ({members}), then `medsg ensemble` them again"
        )
    return read_yaml(cfg_path), read_json(summary_path)


def committed_fold(summary: dict[str, Any], fold: int) -> dict[str, Any]:
    """The report's metrics of ``fold`` (its per-fold table row)."""
    for row in summary.get("per_fold", []):
        if row.get("fold") == fold:
            return row
    folds = [row.get("fold") for row in summary.get("per_fold", [])]
    raise ConfigError(f"--fold {fold}: the report has no such fold (it has folds {folds})")


def environment_differences(
    recorded: dict[str, Any], current: dict[str, Any], same_code: bool | None
) -> list[str]:
    """What differs between the recorded run's provenance and this machine, in words."""
    notes = []
    if same_code is False:
        notes.append(
            f"code: the package, split files or pins differ from the run's commit {str(recorded.get('git'))[:12]}"
        )
    elif same_code is None:
        notes.append(
            "code: cannot tell whether this checkout is the run's commit (no git, or commit unknown)"
        )
    for key in ENVIRONMENT_KEYS:
        if key not in recorded:
            notes.append(f"{key}: not recorded by the run (now {current.get(key)})")
        elif recorded[key] != current.get(key):
            notes.append(f"{key}: {recorded[key]} when the report was made, {current.get(key)} now")
    return notes


def compare_fold(
    committed: dict[str, Any], reproduced: dict[str, Any], environment: list[str], tolerance: float
) -> tuple[str, list[dict[str, Any]]]:
    """The verdict and the per-metric rows. Not exact with nothing in the environment differing is a failure:
    the same code on the same machine and threads is deterministic."""
    rows, exact, within = [], True, True
    for metric in (*COMPARED, "best_epoch"):
        a, b = committed.get(metric), reproduced.get(metric)
        diff = None if a is None or b is None else float(b) - float(a)
        rows.append({"metric": metric, "committed": a, "reproduced": b, "difference": diff})
        exact &= a == b
        if metric != "best_epoch" and diff is not None:
            within &= math.isfinite(diff) and abs(diff) <= tolerance
    if exact:
        return "exact", rows
    return ("within tolerance" if within and environment else "differs"), rows


def reproduce_fold(
    report_dir: str | Path,
    fold: int,
    overrides: list[str] | None = None,
    out: str | Path = "runs/reproduce",
    tolerance: float = DEFAULT_TOLERANCE,
) -> Reproduction:
    """Rerun ``fold`` from the report's recorded config (into ``out/<name>``; a killed rerun resumes) and
    compare its test metrics with the committed ones; writes ``reproduce.json`` in the rerun's fold folder."""
    report_dir = Path(report_dir)
    saved, summary = read_report(report_dir)
    cfg_path = RunFolder(report_dir).config
    committed = committed_fold(summary, fold)
    recorded = saved.get("provenance") or {}
    settings = [
        f"experiment.output_dir={Path(out)}",
        "explain.cases_per_fold=0",  # explanations never change the metrics; skip their cost
        "explain.localization=false",
    ]
    cfg = config_from_dict(saved, [*settings, *(overrides or [])], source=str(cfg_path))
    run_dir = run_experiment(cfg, folds=[fold], report=False)
    reproduced = read_json(RunFolder(run_dir).fold(fold).metrics)
    environment = environment_differences(
        recorded, provenance(cfg.train.device), git_same_code(recorded.get("git"))
    )
    verdict, rows = compare_fold(committed, reproduced, environment, tolerance)
    result = Reproduction(verdict, fold, rows, environment, run_dir)
    record = {
        "report": str(report_dir),
        "fold": fold,
        "verdict": verdict,
        "tolerance": tolerance,
        "metrics": rows,
        "environment_differences": environment,
    }
    atomic_write_text(RunFolder(run_dir).fold(fold).file(REPRODUCE_FILE), json.dumps(record, indent=1) + "\n")
    return result


def reproduction_lines(result: Reproduction, tolerance: float) -> list[str]:
    """The console table: one row per metric, then the environment and the verdict."""
    lines = [f"fold {result.fold}: committed vs reproduced ({result.run_dir})"]
    for row in result.rows:
        a, b, d = row["committed"], row["reproduced"], row["difference"]
        lines.append(f"  {row['metric']:<18} {a!s:<22} {b!s:<22} {'' if d is None else f'{d:+.2e}'}")
    lines += [f"  differs: {note}" for note in result.environment] or [
        "  same code, versions, threads and device"
    ]
    verdict = {
        "exact": "exact: identical to the last digit",
        "within tolerance": f"within tolerance ({tolerance} absolute), explained by the differences above",
        "differs": f"DIFFERS: beyond tolerance ({tolerance}), or not exact although nothing differs",
    }[result.verdict]
    return [*lines, verdict]
