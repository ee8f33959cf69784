"""``medsg evaluate MODEL --adapter NAME --root DIR``: a labelled external test set, scored like cross-validation.

1. The test set is read by a dataset adapter (any ``data.options`` through ``--option``: e.g.
   ``--option subset=validation`` or ``subset=test`` for ISIC 2018's official layouts). Its labels are matched
   to the model's classes by name (case-insensitively where no exact name fits), so a test set may list them in
   any order (a CSV or class folders sort them) or hold only some of them (a benign/malignant ultrasound set
   for a model that also knows "normal"); the report names the classes it lacks. A label the model does not
   know is refused by name.
2. Before anything is scored, it is audited against the model's training images with the audit's own rules
   (identical bytes, identical pixels, or dHash-256 distance and thumbnail correlation within the training
   run's thresholds): ``overlap.csv`` lists every test image that is a training image, and the report says how
   many. ``--exclude-overlap`` drops them and says so; leakage between training and test is the classic way
   external numbers lie.
3. The ensemble predicts the test set (``medsg.deploy.predict``, calibrated probabilities, unreadable files skipped
   and counted), and the report gets the same metrics, bootstrap CIs (resampling the test set's groups, e.g.
   lesions) and figures as cross-validation, titled as an external test, with the cross-validated figures
   beside them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.core.errors import DataError
from medsg.core.io import ID_CSV, atomic_write_text, read_json
from medsg.data import load_manifest
from medsg.deploy.package import ModelBundle, load_model
from medsg.deploy.predict import CALIBRATION_NOTE, InputItem, PredictOptions, audit_overlap, predict_items
from medsg.metrics import bootstrap_ci, calibration_cis, classification_metrics
from medsg.report.external import write_external_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateRequest:
    """What ``medsg evaluate`` was asked for."""

    adapter: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    exclude_overlap: bool = False
    predict: PredictOptions = field(default_factory=PredictOptions)


def align_labels(manifest: pd.DataFrame, model_names: list[str], source: str) -> pd.DataFrame:
    """The manifest with ``label`` re-indexed into the model's class order, each row matched by its
    ``label_name`` (exactly, else case-insensitively), so that every score compares like with like.

    Raises ``DataError`` naming the labels the model does not know, with how many images carry each."""
    exact = {name: i for i, name in enumerate(model_names)}
    folded: dict[str, list[int]] = {}
    for i, name in enumerate(model_names):
        folded.setdefault(name.casefold(), []).append(i)

    def index(name: str) -> int | None:
        if name in exact:
            return exact[name]
        candidates = folded.get(name.casefold(), [])
        return candidates[0] if len(candidates) == 1 else None

    names = manifest["label_name"].astype(str)
    found = names.map(index)
    if found.isna().any():
        unknown = names[found.isna()].value_counts()
        listed = ", ".join(f"{name!r} ({count} image(s))" for name, count in unknown.items())
        raise DataError(
            f"{source}: label(s) {listed} are not classes of the model, which predicts {model_names}; rename "
            "them to the model's class names, or leave those images out of the test set"
        )
    out = manifest.copy()
    out["label"] = found.astype(np.int64).to_numpy()
    out["label_name"] = [model_names[i] for i in out["label"]]
    return out


def absent_classes(y: np.ndarray, model_names: list[str]) -> list[str]:
    """The model's classes that no scored test image has: their sensitivity and AUROC are undefined, and the
    macro scores average over the others, so the report says so beside the cross-validation row."""
    return [name for i, name in enumerate(model_names) if not np.any(y == i)]


def cv_predictions(bundle: ModelBundle) -> tuple[pd.DataFrame, bool] | None:
    """The cross-validation's pooled out-of-fold predictions, calibrated with each fold's temperature (and,
    for a shifted decision, its prior shift) when every fold has one (the flag says whether they are), or
    None without a cross-validation."""
    path = bundle.oof_path()
    if path is None:
        return None
    frame = pd.read_csv(path, **ID_CSV)
    folds = {m.name: m for m in bundle.members if m.kind == "fold"}
    if not set(frame["fold"].astype(str)) <= set(folds):
        return frame, False
    decision = bundle.check_decision(list(folds.values()))
    cols = [f"p_{c}" for c in bundle.class_names]
    for fold, rows in frame.groupby(frame["fold"].astype(str)):
        probs = rows[cols].to_numpy(dtype=np.float64)
        frame.loc[rows.index, cols] = folds[fold].calibrated(probs, decision)
    calibrated = all(m.calibration.get("fitted", False) for m in bundle.members if m.kind == "fold")
    return frame, calibrated


def _cv_summary(bundle: ModelBundle) -> dict[str, Any]:
    path = bundle.source / ("cv/summary.json" if bundle.kind == "package" else "summary.json")
    return read_json(path, default={})


def score(
    y: np.ndarray, probs: np.ndarray, raw: np.ndarray, names: list[str], groups: np.ndarray, n: int, seed: int
) -> dict[str, Any]:
    """Metrics, bootstrap CIs (resampling groups) and calibration before/after of the ensemble's predictions."""
    return {
        "metrics": classification_metrics(y, probs, names),
        "bootstrap_ci": bootstrap_ci(y, probs, names, n_resamples=n, seed=seed, groups=groups),
        "calibration": calibration_cis(y, raw, probs, names, n_resamples=n, seed=seed, groups=groups),
    }


def evaluate(model: str | Path, request: EvaluateRequest, out_dir: str | Path) -> dict[str, Any]:
    """Run the whole evaluation; writes predictions, overlap.csv, evaluation.json and the report into out_dir."""
    out_dir = Path(out_dir)
    bundle = load_model(model)
    source = f"{request.adapter} at {request.root}"
    manifest = align_labels(
        load_manifest(request.adapter, request.root, **request.options), bundle.class_names, source
    )
    overlaps, problems = audit_overlap(bundle, list(manifest["id"]), list(manifest["path"]))
    frame = pd.DataFrame(overlaps, columns=["id", "kind", "train_ids"])
    frame["train_ids"] = [";".join(ids) for ids in frame["train_ids"]]
    atomic_write_text(out_dir / "overlap.csv", frame.to_csv(index=False))
    excluded = set(frame["id"]) if request.exclude_overlap else set()
    if overlaps:
        log.warning(
            "%d of %d test images duplicate training images (%s)%s",
            len(overlaps),
            len(manifest),
            frame["kind"].value_counts().to_dict(),
            "; excluded" if excluded else "; kept (use --exclude-overlap to drop them)",
        )
    kept = manifest[~manifest["id"].isin(excluded)]
    items = [InputItem(str(r.id), str(r.path), int(r.label)) for r in kept.itertuples(index=False)]
    result = predict_items(bundle, items, out_dir, request.predict, collect=True)
    if not result.ids:
        why = f"{result.n_skipped} unreadable"
        if excluded:
            why += f", {len(excluded)} excluded as duplicates of training images by --exclude-overlap"
        raise DataError(f"no test image of {request.root} could be predicted ({why})")
    y = np.asarray(result.labels, dtype=np.int64)
    absent = absent_classes(y, bundle.class_names)
    if absent:
        log.warning(
            "the test set has no image of %s: macro scores average over the other classes only", absent
        )
    probs, raw = np.stack(result.probs), np.stack(result.raw)
    groups = kept.set_index("id").loc[result.ids, "group"].astype(str).to_numpy()
    cfg = bundle.config
    n_boot, seed = cfg.eval.bootstrap, cfg.experiment.seed
    scores = score(y, probs, raw, bundle.class_names, groups, n_boot, seed)
    summary = {
        "title": f"External test: {cfg.experiment.name} on {request.adapter} ({Path(request.root).name})",
        "model": str(bundle.source),
        "model_kind": bundle.kind,
        "test_set": {"adapter": request.adapter, "root": str(request.root), "options": request.options},
        "class_names": bundle.class_names,
        "absent_classes": absent,
        "n_listed": len(manifest),
        "n_scored": len(result.ids),
        "n_skipped": result.n_skipped,
        "skipped": result.skipped,
        "unreadable_by_audit": problems,
        "overlap": {
            "n": len(overlaps),
            "by_kind": {str(k): int(v) for k, v in frame["kind"].value_counts().items()},
            "excluded": bool(excluded),
            "rules": dict(zip(("near_dup_threshold", "min_correlation"), bundle.audit_rules(), strict=True)),
            "examples": overlaps[:20],
        },
        "n_flagged": result.n_flagged,
        "predict": result.summary,
        "calibrated": CALIBRATION_NOTE,
        "bootstrap": {"n_resamples": n_boot, "seed": seed, "unit": "group (the adapter's group column)"},
        **scores,
        "cv": _cv_summary(bundle),
    }
    atomic_write_text(out_dir / "evaluation.json", json.dumps(summary, indent=2, default=str) + "\n")
    cv = cv_predictions(bundle)
    write_external_report(summary, (y, probs), cv, bundle.class_names, out_dir)
    return summary
