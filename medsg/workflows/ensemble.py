"""``medsg ensemble``: a seed ensemble's report folder, made from its members' run or report folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medsg.config import config_hash, dump_config
from medsg.core.io import atomic_write_text
from medsg.core.provenance import git_clean, git_hash
from medsg.core.run_folder import CONFIG_FILE
from medsg.report import write_run_data_report
from medsg.report.aggregate import ENSEMBLE_FILE, load_run_or_report
from medsg.report.ensemble import average_runs, ensemble_config
from medsg.workflows.experiment import MADE_BY, check_report_target, check_reports_write

log = logging.getLogger(__name__)


def write_ensemble_report(members: list[Path], out: Path, force: bool = False) -> Path:
    """Average ``members`` (runs of one recipe with other seeds) into the report folder ``out``; its name is
    the ensemble's. Refuses like ``medsg report`` to replace another report, or to write into ``reports/``
    from a tree with uncommitted code. Returns the path of report.html."""
    out = Path(out)
    runs = [load_run_or_report(Path(m)) for m in members]
    run = average_runs(runs, out, out.name, [str(m) for m in members])
    raw = ensemble_config(runs[0], run)
    origin = {
        "run_id": out.name,
        # the recipe and the members: another set of runs in the same folder is another report
        "config_hash": config_hash(raw | {"ensemble": [m["config_hash"] for m in run.ensemble["members"]]}),
        "complete": True,
        "ensemble_of": [m["name"] for m in run.ensemble["members"]],
        "run_commit": None,  # the members' commits are in ensemble.json
        "report_commit": git_hash(),
        "clean_tree": git_clean(),
    }
    check_reports_write(out, force)
    check_report_target(out, origin, force)
    path = write_run_data_report(run, out, run.config.eval.bootstrap, run.config.experiment.seed)
    # the first member's recipe (the members differ only in experiment.seed), named as the ensemble
    atomic_write_text(out / CONFIG_FILE, dump_config(raw))
    atomic_write_text(out / ENSEMBLE_FILE, json.dumps(run.ensemble, indent=1) + "\n")
    atomic_write_text(out / MADE_BY, json.dumps(origin, indent=1) + "\n")
    log.info("ensemble of %d runs written to %s", len(runs), path)
    return path
