"""``medsg evaluate MODEL --adapter NAME --root DIR``: a labelled external test set, scored like cross-validation.

1. The test set is read by a dataset adapter (any ``data.options`` through ``--option``: e.g.
   ``--option subset=validation`` or ``subset=test`` for ISIC 2018's official layouts); its class list must be
   the model's, in the same order.
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
from medsg.core.io import atomic_write_text, read_json
from medsg.data import class_names, load_manifest
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


def check_classes(bundle: ModelBundle, test_names: list[str], source: str) -> None:
    """The test set's classes must be the model's, in the same order, or every score would be wrong."""
    if list(test_names) != list(bundle.class_names):
        raise DataError(
            f"{source} has classes {test_names}, the model {bundle.source} predicts {bundle.class_names}: "
            "the class lists (and their order) must match"
        )


def cv_predictions(bundle: ModelBundle) -> tuple[pd.DataFrame, bool] | None:
    """The cross-validation's pooled out-of-fold predictions, calibrated with each fold's temperature (and,
    for a shifted decision, its prior shift) when every fold has one (the flag says whether they are), or
    None without a cross-validation."""
    path = bundle.oof_path()
    if path is None:
        return None
    frame = pd.read_csv(path, dtype={"id": str})
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
    manifest = load_manifest(request.adapter, request.root, **request.options)
    check_classes(bundle, class_names(request.adapter, request.root), f"{request.adapter} at {request.root}")
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
        raise DataError(f"no test image of {request.root} could be predicted ({result.n_skipped} skipped)")
    y = np.asarray(result.labels, dtype=np.int64)
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
