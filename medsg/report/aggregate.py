"""Read a run folder (only the finished folds) and pool them into the summary that the report shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.calibration import (
    CALIBRATED_PREDICTIONS,
    CALIBRATION_FILE,
    DECISION_TEXT,
    VAL_PREDICTIONS,
    apply_temperature,
)
from medsg.config import EvalConfig, load_saved_config
from medsg.core.errors import DataError
from medsg.core.io import ID_CSV, read_json
from medsg.core.run_folder import RunFolder
from medsg.metrics import (
    HEADLINE,
    bootstrap_ci,
    calibration_cis,
    classification_metrics,
    sensitivity_cis,
    summarize_folds,
)
from medsg.report.decision import decision_summary, headline_rule, rule_probs
from medsg.report.operating_points import (
    critical_class,
    operating_points,
    section_text,
)
from medsg.report.protocol import protocol, recipe
from medsg.report.run_data import RunData
from medsg.report.run_files import UNKNOWN, read_json_or_none
from medsg.report.subgroups import subgroup_summary

ENSEMBLE_FILE = "ensemble.json"  # beside a seed ensemble's report: its members and how they were combined
POOLED_TEXT = (
    "Pooled out-of-fold figures combine the predictions of k different models (one per fold, each tested on "
    "the images it never saw); they describe the procedure, not one model."
)


def load_run(run_dir: Path) -> RunData:
    """Read config.yaml and every finished fold_K/ (DONE marker); raise if none is finished."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run folder {run_dir} does not exist; pass the <output_dir>/<experiment> folder"
        )
    config = load_saved_config(run_dir, required=False)
    fold_dirs = {f.name: f.path for f in RunFolder(run_dir).folds_on_disk()}
    done = sorted(k for k, d in fold_dirs.items() if RunFolder(run_dir).fold(k).done)
    if not done:
        raise FileNotFoundError(
            f"no finished fold in {run_dir} (no fold_K/DONE marker); train at least one fold before reporting"
        )
    expected = range(config.splits.k) if config else range(max(fold_dirs) + 1)  # no config: the folders seen
    missing = [fold for fold in expected if fold not in done]
    frames, class_names = [], None
    run = RunData(run_dir, config, [], done, missing, pd.DataFrame())
    for fold in done:
        frame = _read_predictions(fold_dirs[fold] / "predictions.csv", fold)
        names = [c[2:] for c in frame.columns if c.startswith("p_")]
        if class_names is not None and names != class_names:
            raise DataError(
                f"{fold_dirs[fold] / 'predictions.csv'} has classes {names}, other folds have {class_names}; "
                "all folds of a run must share one class list"
            )
        class_names = names
        frames.append(frame)
        run.fold_meta[fold] = read_json(fold_dirs[fold] / "metrics.json", {}, f"re-run fold {fold}")
        history = fold_dirs[fold] / "history.csv"
        if history.exists():
            run.histories[fold] = _read_csv(history, f"re-run fold {fold} or delete the file")
    run.class_names = class_names or []
    run.oof = pd.concat(frames, ignore_index=True)
    _load_calibration(run, fold_dirs)
    _load_val_predictions(run, fold_dirs)
    if run.oof["id"].duplicated().any():
        dup = run.oof.loc[run.oof["id"].duplicated(), "id"].iloc[0]
        raise DataError(
            f"image id {dup!r} is in the test set of more than one fold in {run_dir}; splits overlap"
        )
    return run


def load_report_folder(report_dir: Path) -> RunData:
    """A committed report folder as the run it pools: oof_predictions.csv (with each image's group),
    config.yaml, and, where present, calibration.json and val_predictions.csv. Everything a paired comparison
    or a reader's recomputation needs, without the run folder."""
    report_dir = Path(report_dir)
    oof_path = report_dir / "oof_predictions.csv"
    if not oof_path.is_file():
        raise FileNotFoundError(
            f"{report_dir} is neither a run folder (no fold_K/DONE) nor a report folder (no oof_predictions.csv)"
        )
    oof = _read_csv(
        oof_path, "write the report again", dtype={"id": str, "group": str}, keep_default_na=False
    )
    names = [c[2:] for c in oof.columns if c.startswith("p_")]
    folds = sorted(int(f) for f in oof["fold"].unique())
    run = RunData(report_dir, load_saved_config(report_dir, required=False), names, folds, [], oof)
    records = read_json_or_none(report_dir / CALIBRATION_FILE)
    if records:
        run.calibration = {int(k): v for k, v in records.items()}
        if set(run.calibration) >= set(folds):
            calibrated = oof.copy()
            for fold in folds:
                rows = (oof["fold"] == fold).to_numpy()
                calibrated.loc[rows, [f"p_{c}" for c in names]] = apply_temperature(
                    run.probs(oof[rows]), float(run.calibration[fold]["temperature"])
                )
            run.calibrated = calibrated
    val_path = report_dir / VAL_PREDICTIONS
    if val_path.is_file():
        val = _read_csv(val_path, "write the report again", **ID_CSV)
        run.val = {int(f): frame.reset_index(drop=True) for f, frame in val.groupby("fold")}
    run.ensemble = read_json_or_none(report_dir / ENSEMBLE_FILE)
    return run


def load_run_or_report(path: Path) -> RunData:
    """A run folder (finished folds) or, when it has no fold folder, a committed report folder."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("fold_*")) and (path / "oof_predictions.csv").is_file():
        return load_report_folder(path)
    return load_run(path)


def headline_probs(run: RunData, rule: str | None = None) -> tuple[np.ndarray, str]:
    """The pooled OOF probabilities whose argmax is the run's headline decision (or ``rule``, when given),
    and that rule's name; a ``rule`` the run's folds cannot apply is refused by name."""
    candidates = rule_probs(run)
    if rule is None:
        rule = headline_rule(run_eval(run).decision, candidates)[0]
    elif rule not in candidates:
        raise DataError(
            f"{run.run_dir}: its folds cannot apply the {rule} rule (they have {sorted(candidates)}); "
            "choose one of those"
        )
    return candidates[rule], rule


def _load_calibration(run: RunData, fold_dirs: dict[int, Path]) -> None:
    """Each fold's calibration.json and calibrated predictions, when every included fold has them."""
    paths = {f: fold_dirs[f] / CALIBRATED_PREDICTIONS for f in run.folds}
    if not all(p.is_file() and (p.parent / CALIBRATION_FILE).is_file() for p in paths.values()):
        return
    frames = [_read_predictions(paths[f], f) for f in run.folds]
    calibrated = pd.concat(frames, ignore_index=True).set_index("id")
    if set(calibrated.index) != set(run.oof["id"]):
        raise DataError(f"{run.run_dir}: calibrated_predictions.csv and predictions.csv list different ids")
    run.calibrated = calibrated.loc[run.oof["id"]].reset_index()
    run.calibration = {
        f: read_json(fold_dirs[f] / CALIBRATION_FILE, {}, f"re-run fold {f}") for f in run.folds
    }


def _load_val_predictions(run: RunData, fold_dirs: dict[int, Path]) -> None:
    """Each included fold's inner validation predictions (operating-point thresholds are fixed on them)."""
    for fold in run.folds:
        path = fold_dirs[fold] / VAL_PREDICTIONS
        if not path.is_file():
            continue  # an older run: the operating-point section names the fold and leaves it out
        frame = _read_predictions(path, fold)
        names = [c[2:] for c in frame.columns if c.startswith("p_")]
        if names != run.class_names:
            raise DataError(
                f"{path} has classes {names}, predictions.csv has {run.class_names}; re-run fold {fold}"
            )
        run.val[fold] = frame


def run_critical_class(run: RunData) -> tuple[str | None, str]:
    """The run's critical class (eval.critical_class, else the dataset's) and how it was chosen."""
    adapter = run.config.data.adapter if run.config else UNKNOWN
    return critical_class(run_eval(run).critical_class, adapter, run.class_names)


def run_eval(run: RunData) -> EvalConfig:
    """The run's eval settings (the defaults for a folder without config.yaml)."""
    return run.config.eval if run.config else EvalConfig()


def clinical_sections(
    run: RunData, groups: np.ndarray | None, n_bootstrap: int, seed: int, probs: np.ndarray, rule: str
) -> dict[str, dict[str, Any]]:
    """summary.json's "operating_points" and "subgroups", with the eval.* settings of the run's config.yaml.

    Subgroups are scored on ``probs``, the headline rule's (``rule``) probabilities, as the per-class table is.
    """
    settings = run_eval(run)
    critical, source = run_critical_class(run)
    if critical is None:
        points: dict[str, Any] = {"available": False, "critical_class": None, "points": [], "text": source}
    else:
        points = operating_points(
            run.val,
            run.oof,
            run.class_names,
            critical,
            settings.fixed_specificity,
            settings.fixed_sensitivity,
            groups,
            n_bootstrap,
            seed,
        )
        points["text"] = section_text(points, source)
    try:
        manifest = pd.read_csv(run.run_dir / "manifest.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        manifest = None  # group_labels reads it as defensively: an old or hand-made run folder
    subgroups = subgroup_summary(
        manifest,
        run.oof["id"].astype(str).tolist(),
        run.oof["y_true"].to_numpy(),
        probs,
        run.class_names,
        settings.subgroups,
        critical,
        settings.min_subgroup_size,
        groups,
        n_bootstrap,
        seed,
        rule,
    )
    return {"operating_points": points, "subgroups": subgroups}


def calibration_summary(
    run: RunData, n_bootstrap: int, seed: int, groups: np.ndarray | None = None
) -> dict[str, Any] | None:
    """Per-fold temperatures and pooled ECE, Brier and log loss before/after, with paired bootstrap CIs."""
    if run.calibrated is None:
        return None
    y = run.oof["y_true"].to_numpy()
    cis = calibration_cis(
        y,
        run.probs(),
        run.probs(run.calibrated),
        run.class_names,
        n_resamples=n_bootstrap,
        seed=seed,
        groups=groups,
    )
    per_fold = [
        {
            "fold": f,
            "temperature": rec.get("temperature"),
            "fitted": rec.get("fitted"),
            "how": rec.get("fitted_on") or rec.get("reason"),
            "n_val": rec.get("n_val"),
            "warning": rec.get("warning"),
        }
        for f, rec in run.calibration.items()
    ]
    return {"per_fold": per_fold, **cis}


def group_labels(run: RunData) -> tuple[np.ndarray | None, str]:
    """Each pooled row's split group (manifest.csv's ``splits.grouping`` column), and the bootstrap unit in words.

    The split keeps near-duplicates and lesions in one fold, so they are correlated: the CIs resample those
    groups. Without the column (an old or hand-made run folder) the CIs resample images, and say so.
    """
    if "group" in run.oof.columns:  # a report folder: oof_predictions.csv carries each image's group
        groups = run.oof["group"].astype(str)
        if (groups == "").any():
            return None, "images (some predicted images have no group in oof_predictions.csv)"
        return (
            groups.to_numpy(),
            f"the {groups.nunique()} groups the split keeps together ({len(groups)} images)",
        )
    column = run.config.splits.grouping if run.config else "group"
    path = run.run_dir / "manifest.csv"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["id", column])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return (
            None,
            "images (no group column in the run's manifest.csv, so images are treated as independent)",
        )
    groups = frame.drop_duplicates("id").set_index("id")[column].reindex(run.oof["id"])
    if groups.isna().any() or (groups == "").any():
        return None, "images (some predicted images have no group in manifest.csv)"
    n = groups.nunique()
    return groups.to_numpy(), f"the {n} groups the split keeps together ({len(groups)} images)"


def baseline_metrics(run: RunData) -> dict[str, Any]:
    """A model that gives every image the pooled class frequencies: argmax is the majority class.

    A row to beat: balanced accuracy 1/C, AUROC 0.5, log loss = entropy of the class frequencies.
    """
    y = run.oof["y_true"].to_numpy()
    freq = np.bincount(y, minlength=len(run.class_names)) / len(y)
    return classification_metrics(y, np.tile(freq, (len(y), 1)), run.class_names)


def fold_size_notes(run: RunData, per_fold: list[dict[str, Any]]) -> list[str]:
    """Why a fold has fewer test images than the largest: split-file ids the audit policy dropped
    (protocol.json's dropped_ids), and ids absent from the data (a split file over a larger copy). When every
    fold misses split-file images (the data are a subset of the split file), that is said once for all."""
    split_file = read_json_or_none(run.run_dir / "splits.json") or {}
    folds = split_file.get("folds") if isinstance(split_file.get("folds"), list) else []
    largest = max(m["n"] for m in per_fold)
    protocol = read_json_or_none(run.run_dir / "protocol.json") or {}
    listed = protocol.get("dropped_ids")
    audit_dropped = {str(i) for i in listed} if isinstance(listed, list) else set()
    missing: dict[int, tuple[list[str], list[str]]] = {}
    for m in per_fold:
        fold = m["fold"]
        if fold < len(folds) and isinstance(folds[fold], dict):
            have = set(run.oof.loc[run.oof["fold"] == fold, "id"])
            gone = sorted(str(i) for i in folds[fold].get("val", []) if str(i) not in have)
            missing[fold] = (
                [i for i in gone if i in audit_dropped],
                [i for i in gone if i not in audit_dropped],
            )
    subset = bool(missing) and all(absent for _, absent in missing.values())
    notes = []
    if subset:
        n_absent = sum(len(absent) for _, absent in missing.values())
        n_listed = sum(len(f.get("val", [])) for f in folds if isinstance(f, dict))
        notes.append(
            f"the data folder holds a subset of the split file: {n_absent} of its {n_listed} images are absent, "
            "so every fold tests only the images present (sizes: "
            + ", ".join(f"fold {m['fold']} {m['n']}" for m in per_fold)
            + ")"
        )
    for m in per_fold:
        fold = m["fold"]
        dropped, absent = missing.get(fold, ([], []))
        if m["n"] == largest or (subset and not dropped):
            continue
        text = f"fold {fold} has {m['n']} test images, {largest - m['n']} fewer than the largest fold"
        if fold in missing:
            if dropped:
                text += f"; {len(dropped)} of its split-file images were removed by the audit policy ({_ids(dropped)})"
            if absent and not subset:
                text += (
                    f"; {len(absent)} of its split-file images are not in the data the run read (the split file "
                    f"lists more images than the data folder holds: {_ids(absent)})"
                )
        else:
            text += " (folds are made with whole groups, so their sizes differ)"
        notes.append(text)
    return notes


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")


def confusion_text(pooled: dict[str, Any], class_names: list[str], critical: str | None) -> str:
    """The clinically worst confusions in a sentence, e.g. '28 of 209 malignant predicted normal'.

    With a critical class (eval.critical_class or the dataset's: malignant, melanoma) its misses are stated;
    otherwise the three largest off-diagonal cells.
    """
    cm = np.asarray(pooled["confusion_matrix"])
    support = cm.sum(axis=1)
    if critical in class_names:
        c = class_names.index(critical)
        misses = [
            f"{cm[c, j]} of {support[c]} {critical} predicted {class_names[j]}"
            for j in np.argsort(-cm[c])
            if j != c and cm[c, j] > 0
        ]
        if not misses:
            return f"No {critical} image was predicted as another class."
        return f"Missed {critical} (the clinically worst errors): " + "; ".join(misses) + "."
    cells = [(cm[i, j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    top = sorted(cells, key=lambda t: (-t[0], t[1], t[2]))[:3]
    if not top:
        return "No image was misclassified."
    return (
        "Largest confusions: "
        + "; ".join(f"{n} of {support[i]} {class_names[i]} predicted {class_names[j]}" for n, i, j in top)
        + "."
    )


def build_summary(run: RunData, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-fold metrics (recomputed from predictions.csv), mean ± SD, pooled metrics and bootstrap CIs.

    The headline uses the probabilities of ``eval.decision`` (``medsg.report.decision``): the raw ones for
    ``balanced``, each fold's prior-shifted ones (with the rule's strength) otherwise; the Decision rule
    section shows every rule the folds can apply.
    """
    y = run.oof["y_true"].to_numpy()
    groups, unit = group_labels(run)
    requested = run_eval(run).decision
    baseline = baseline_metrics(run)
    critical = run_critical_class(run)[0]
    candidates = rule_probs(run)
    decision = decision_summary(
        run, requested, candidates, groups, baseline["accuracy"], critical, n_bootstrap, seed
    )
    p = candidates[decision["headline"]]
    per_fold = []
    for fold in run.folds:
        rows = (run.oof["fold"] == fold).to_numpy()
        metrics = classification_metrics(y[rows], p[rows], run.class_names)
        meta = run.fold_meta.get(fold, {})
        per_fold.append(
            {"fold": fold, "best_epoch": meta.get("best_epoch"), "selection": meta.get("selection")} | metrics
        )
    notes = [f"fold {m['fold']}: {note}" for m in per_fold for note in m["notes"]]
    notes += fold_size_notes(run, per_fold)
    if run.missing:
        notes.append(f"folds {run.missing} are not finished and are not included")
    if decision["note"]:
        notes.append(decision["note"])
    proto = protocol(run)
    calibration = calibration_summary(run, n_bootstrap, seed, groups)
    extra = {} if calibration is None else {"calibration": calibration}
    extra |= clinical_sections(run, groups, n_bootstrap, seed, p, decision["headline"])
    pooled = classification_metrics(y, p, run.class_names)
    return {
        "experiment": proto["experiment"],
        "synthetic_data": bool(run.config and run.config.data.synthetic),
        "protocol": proto,
        "recipe": recipe(run.config),
        "class_names": run.class_names,
        "folds_included": run.folds,
        "folds_missing": run.missing,
        "n_pooled": int(len(y)),
        "per_fold": [
            {k: m[k] for k in ("fold", "n", "best_epoch", "selection", *HEADLINE)} for m in per_fold
        ],
        "per_fold_full": per_fold,
        "mean_sd": summarize_folds(per_fold),
        "pooled": pooled,
        "baseline": {k: baseline[k] for k in HEADLINE},
        "decision": decision,
        "bootstrap_ci": bootstrap_ci(
            y, p, run.class_names, n_resamples=n_bootstrap, seed=seed, groups=groups
        ),
        "sensitivity_ci": sensitivity_cis(y, p, run.class_names, n_bootstrap, seed, groups=groups),
        "confusions": confusion_text(pooled, run.class_names, critical),
        "notes": notes,
        "definitions": {
            "per_fold": "recomputed from each fold's test predictions (fold_K/predictions.csv)",
            "mean_sd": "mean and SD (ddof=1) over included folds; the SD carries the training variability",
            "bootstrap_ci": f"percentile {n_bootstrap}-resample bootstrap of the pooled out-of-fold "
            f"predictions, seed {seed}, resampling {unit}",
            "pooled": POOLED_TEXT,
            "baseline": "every image gets the pooled class frequencies, so the prediction is always the "
            "majority class",
            "ece": "15 equal-width bins (m/15, (m+1)/15] on the max probability; "
            "sum over bins of |bin|/n * |accuracy - mean confidence|",
            "ece_ci": "ECE is biased upwards under resampling, so its bootstrap CI can sit above the point value",
            "y_pred": f"argmax of the {decision['headline']} rule's probabilities: "
            + DECISION_TEXT[decision["headline"]]
            + " (the y_pred column of predictions.csv is not used)",
            "brier": "mean over samples of sum over classes of (p - onehot)^2 (range 0 to 2)",
            "macro AUROC": "mean of one-vs-rest AUROCs over the classes present; absent classes are null",
        },
    } | extra


def _read_csv(path: Path, advice: str, **kwargs: Any) -> pd.DataFrame:
    """pandas.read_csv whose errors name the file and say what to do."""
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV ({exc}); {advice}") from exc


def _read_predictions(path: Path, fold: int) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path} is missing although the fold is marked DONE; re-run fold {fold}")
    frame = _read_csv(path, f"re-run fold {fold}", **ID_CSV)
    missing = [c for c in ("id", "y_true") if c not in frame.columns]
    if missing or not any(c.startswith("p_") for c in frame.columns):
        raise DataError(
            f"{path} lacks columns {missing or ['p_<class>']}; expected id, fold, y_true, y_pred, p_*"
        )
    frame["fold"] = fold
    return frame
