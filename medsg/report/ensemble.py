"""Seed ensembles: runs of one recipe (another ``experiment.seed``, the same folds and inner splits) averaged.

Why: one CPU training run on a few hundred images is a noisy draw of its recipe. Initialisation, batch order,
augmentation draws and selection on ~90 inner-validation images move BUSI's balanced accuracy by up to 0.07
(README, Results), so a single run says little about the recipe and the luckiest of several says less. Averaging
the runs' softmax outputs (as nnU-Net ensembles its configurations) removes part of that noise.

Per outer fold k, from files every run and report folder keeps:

* the test-fold probabilities are the mean of the members' raw (uncalibrated) probabilities, and likewise the
  inner-validation probabilities at each member's selected epoch (the same images in every member, since the
  inner split follows ``splits.seed``);
* the temperature, prior shift and majority-floor strength are refitted on the averaged inner-validation
  predictions (``medsg.calibration``), as a training run fits its own; nothing is fitted on the test fold.

Members must agree on classes, outer folds, labels, inner-validation images and every config key that changes
results except ``experiment.seed``: an average of different recipes answers another question, so it is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.calibration import (
    PRIOR_KEY,
    apply_temperature,
    fit_prior_shift,
    fold_calibration,
    probability_scores,
)
from medsg.config import config_hash, read_yaml, result_diff
from medsg.core.errors import DataError
from medsg.core.run_folder import CONFIG_FILE
from medsg.report.aggregate import group_labels
from medsg.report.protocol import protocol
from medsg.report.run_data import RunData
from medsg.report.run_files import read_json_or_none

FREE_PREFIX = "experiment."  # members may differ in seed, names and folders (provenance is ignored)
FITTED_ON = "the members' averaged inner validation predictions at their selected epochs"
METHOD = (
    "per outer fold, the mean of the members' raw softmax probabilities (test fold and inner validation split); "
    "temperature, prior shift and majority-floor strength refitted on the averaged inner validation predictions"
)


def member_name(run: RunData) -> str:
    return run.config.experiment.name if run.config else run.run_dir.name


def _raw_config(run: RunData) -> dict[str, Any]:
    path = run.run_dir / CONFIG_FILE
    if run.config is None or not path.is_file():
        raise DataError(
            f"{run.run_dir} has no {CONFIG_FILE}: without its recipe the ensemble cannot show that its members "
            "differ only in experiment.seed; pass run folders made by `medsg run` or their report folders"
        )
    return read_yaml(path)


def ensemble_config(first: RunData, ensemble: RunData) -> dict[str, Any]:
    """The ensemble's config.yaml: its first member's, as written (provenance and paths kept), under the
    ensemble's name and report folder (the members differ only in ``experiment``)."""
    raw = _raw_config(first)
    experiment = ensemble.config.experiment
    raw["experiment"] |= {"name": experiment.name, "report_dir": experiment.report_dir}
    return raw


def _recipe(run: RunData) -> dict[str, Any]:
    """The run's config with defaults filled (so configs of any age compare), after checking it has one."""
    _raw_config(run)
    return run.config.model_dump(mode="json")


def _by_id(frame: pd.DataFrame, ids: pd.Series, columns: list[str]) -> np.ndarray:
    return frame.set_index("id").loc[ids, columns].to_numpy(dtype=np.float64)


def check_members(runs: list[RunData]) -> None:
    """Raise ``DataError`` (naming the member and what differs) unless the runs can be averaged."""
    if len(runs) < 2:
        raise DataError("an ensemble needs at least two runs")
    first = runs[0]
    first_recipe = _recipe(first)
    seeds = {first.config.experiment.seed: member_name(first)}
    key = first.oof[["id", "fold", "y_true"]].sort_values("id").reset_index(drop=True)
    for run in runs:
        missing = [f for f in run.folds if f not in run.val or f not in run.calibration]
        if run.missing or missing:
            raise DataError(
                f"{run.run_dir}: folds {run.missing or missing} lack predictions, inner validation predictions or "
                "calibration.json; an ensemble refits each fold's calibration on its members' inner validation "
                "predictions, so every member needs all of them (finish or rerun those folds)"
            )
    for run in runs[1:]:
        where = f"{run.run_dir} and {first.run_dir}"
        if run.class_names != first.class_names:
            raise DataError(f"{where} have other classes ({run.class_names} vs {first.class_names})")
        other = run.oof[["id", "fold", "y_true"]].sort_values("id").reset_index(drop=True)
        if not other.astype(str).equals(key.astype(str)):
            raise DataError(
                f"{where} do not test the same images in the same outer folds with the same labels; run every "
                "member on one splits.file"
            )
        for fold in first.folds:
            if set(run.val[fold]["id"]) != set(first.val[fold]["id"]):
                raise DataError(
                    f"{where}: fold {fold}'s inner validation images differ, so its calibration cannot be "
                    "refitted on averaged predictions; members must share splits.seed and "
                    "splits.inner_val_fraction"
                )
        diff = [d for d in result_diff(first_recipe, _recipe(run)) if not d.startswith(FREE_PREFIX)]
        if diff:
            raise DataError(
                f"{where} differ in more than experiment.seed ({'; '.join(diff)}): a seed ensemble averages "
                "runs of one recipe"
            )
        seed = run.config.experiment.seed
        if seed in seeds:
            raise DataError(
                f"{member_name(run)} and {seeds[seed]} share experiment.seed {seed}: the same recipe and seed is "
                "the same run twice; give each member its own seed"
            )
        seeds[seed] = member_name(run)


def _mean_probs(frames: list[pd.DataFrame], ids: pd.Series, names: list[str]) -> np.ndarray:
    """The members' probabilities of ``ids``, averaged (each frame is one member's)."""
    columns = [f"p_{c}" for c in names]
    return np.mean([_by_id(f, ids, columns) for f in frames], axis=0)


def _fold_calibration(
    runs: list[RunData], fold: int, val: pd.DataFrame, y: np.ndarray, probs: np.ndarray
) -> dict[str, Any]:
    """The fold's calibration.json record, refitted on the averaged inner validation predictions."""
    names = runs[0].class_names
    priors = [np.asarray(r.calibration[fold][PRIOR_KEY]["class_prior"], dtype=np.float64) for r in runs]
    if any(not np.allclose(p, priors[0]) for p in priors[1:]):
        raise DataError(f"fold {fold}: the members' training priors differ, so their training folds do too")
    val_y = val["y_true"].to_numpy()
    val_probs = val[[f"p_{c}" for c in names]].to_numpy(dtype=np.float64)
    record = fold_calibration(val_y, val_probs, names, "", source=FITTED_ON)
    scaled = apply_temperature(val_probs, record["temperature"])
    base = runs[0].calibration[fold][PRIOR_KEY]
    record[PRIOR_KEY] = {"class_prior": base["class_prior"], "n_train": base["n_train"]} | fit_prior_shift(
        val_y, scaled, priors[0], fitted_on=FITTED_ON + ", after the temperature"
    )
    return record | {
        "fold": fold,
        "test_before": probability_scores(y, probs, names),
        "test_after": probability_scores(y, apply_temperature(probs, record["temperature"]), names),
    }


def selected_epochs(run: RunData) -> dict[int, Any]:
    """fold -> the epoch a member kept: its folds' metrics.json, or the per-fold rows of its summary.json."""
    if run.fold_meta:
        return {f: m.get("best_epoch") for f, m in run.fold_meta.items()}
    summary = read_json_or_none(run.run_dir / "summary.json") or {}
    return {int(row["fold"]): row.get("best_epoch") for row in summary.get("per_fold", [])}


def ensemble_record(runs: list[RunData], name: str, paths: list[str]) -> dict[str, Any]:
    """ensemble.json: what was averaged, from where, and how; the protocol lines the report shows for it."""
    members = [
        {
            "name": member_name(r),
            "path": path,
            "seed": r.config.experiment.seed,
            "run_commit": r.config.saved_provenance.get("git"),
            "config_hash": config_hash(_raw_config(r)),
            "selected_epochs": {str(f): e for f, e in sorted(selected_epochs(r).items())},
        }
        for r, path in zip(runs, paths, strict=True)
    ]
    first = runs[0]
    base = (read_json_or_none(first.run_dir / "summary.json") or {}).get("protocol") or protocol(first)
    seeds = ", ".join(str(m["seed"]) for m in members)
    commits = sorted({str(m["run_commit"])[:10] for m in members})
    lines = {
        "experiment": name,
        "experiment seed": f"{seeds} (one run each, averaged)",
        "model": f"{first.config.model.name}, {len(runs)} runs averaged per outer fold",
        "model selection": f"{base.get('model selection', 'unknown')}; each member keeps its own epoch",
        "ensemble": f"{len(runs)} runs of one recipe ({', '.join(m['name'] for m in members)}): {METHOD}",
        "provenance": f"members trained at {', '.join(commits)}; the first member's environment: "
        f"{base.get('provenance', 'unknown')}",
    }
    return {"method": METHOD, "members": members, "protocol": base | lines}


def average_runs(runs: list[RunData], out: Path, name: str, paths: list[str] | None = None) -> RunData:
    """The seed ensemble of ``runs`` as a report folder's ``RunData`` at ``out`` (see the module docstring)."""
    check_members(runs)
    first, names = runs[0], runs[0].class_names
    columns = [f"p_{c}" for c in names]
    oof = first.oof[["id", "fold", "y_true"]].copy()
    groups, _ = group_labels(first)  # the bootstrap's unit, from the first member's manifest or report
    if groups is not None:
        oof["group"] = groups
    probs = _mean_probs([r.oof for r in runs], oof["id"], names)
    oof["y_pred"] = probs.argmax(axis=1)
    oof[columns] = probs
    y = oof["y_true"].to_numpy()
    val, calibration = {}, {}
    calibrated = oof.copy()
    for fold in first.folds:
        frame = first.val[fold][["id", "fold", "y_true"]].copy()
        fold_probs = _mean_probs([r.val[fold] for r in runs], frame["id"], names)
        frame["y_pred"] = fold_probs.argmax(axis=1)
        frame[columns] = fold_probs
        val[fold] = frame
        rows = (oof["fold"] == fold).to_numpy()
        calibration[fold] = _fold_calibration(runs, fold, frame, y[rows], probs[rows])
        calibrated.loc[rows, columns] = apply_temperature(probs[rows], calibration[fold]["temperature"])
    epochs = [selected_epochs(r) for r in runs]
    # the report's "selected epoch" column: each member's, in member order
    fold_meta = {f: {"best_epoch": "/".join(str(e.get(f)) for e in epochs)} for f in first.folds}
    experiment = first.config.experiment.model_copy(update={"name": name, "report_dir": str(out)})
    return RunData(
        run_dir=out,
        config=first.config.model_copy(update={"experiment": experiment}),
        class_names=names,
        folds=list(first.folds),
        missing=[],
        oof=oof,
        fold_meta=fold_meta,
        calibrated=calibrated,
        calibration=calibration,
        val=val,
        ensemble=ensemble_record(runs, name, paths or [str(r.run_dir) for r in runs]),
    )
