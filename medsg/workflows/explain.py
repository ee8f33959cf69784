"""``medsg explain RUN_DIR``: explain a finished run's folds again, with its own models, data and folds.

Each fold's selected model explains the images of its own outer test fold (out-of-fold, as its predictions
were made), through the same ``medsg.explain`` code that ``medsg run`` uses; then the folds are pooled into
``<run_dir>/explain/`` (localization CSVs with grouped CIs, review.html). Unlike the run's own pass, this one
also runs the gradient-free CAM on a fixed, seeded subset of lesion images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsg.config import Config, load_saved_config
from medsg.core.errors import ConfigError, DataError
from medsg.core.io import ID_CSV
from medsg.core.run_folder import FoldFolder, RunFolder
from medsg.data import class_names
from medsg.data.manifest import read_manifest
from medsg.data.splits import read_splits
from medsg.data.transforms import mask_union, read_mask
from medsg.explain import EXPLAIN_DIR, ExplainSettings, cases_from_manifest, collect_explanations
from medsg.explain.cases import Case, explain_cases, pick_cases
from medsg.models.checkpoint import load_exact
from medsg.train.model import build_model
from medsg.workflows.experiment import review_critical_class
from medsg.workflows.prepare import ManifestFolds, PreparedData

log = logging.getLogger(__name__)

__all__ = ["ExplainRequest", "explain_run"]


@dataclass(frozen=True)
class ExplainRequest:
    """What ``medsg explain`` was asked for. ``images`` are ids or paths of the run's images."""

    folds: tuple[int, ...] | None = None
    cases_per_fold: int | None = None  # None: the run's explain.cases_per_fold
    images: tuple[str, ...] = ()
    deletion_steps: int = 20
    gradient_free_cases: int = 100
    seed: int = 0


def _prepared(run_dir: Path, cfg: Config) -> PreparedData:
    """The run's own manifest, folds and class names, read from its folder (never re-derived from data.root)."""
    manifest = read_manifest(run_dir / "manifest.csv")
    _, folds = read_splits(run_dir / "splits.json")
    ids = set(manifest["id"])
    folds = [{part: [i for i in fold[part] if i in ids] for part in ("train", "val")} for fold in folds]
    try:
        names = class_names(cfg.data.adapter, cfg.data.root, **cfg.data.options)
    except Exception as exc:  # noqa: BLE001 - the data may have moved; the predictions still name the classes
        raise DataError(f"cannot read the class names of {cfg.data.root}: {exc}") from exc
    return PreparedData(manifest, list(names), folds, "")


def _probabilities(fold_path: Path, ids: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """The fold's saved test probabilities, in ``ids`` order."""
    frame = pd.read_csv(fold_path / "predictions.csv", **ID_CSV).set_index("id")
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise DataError(f"{fold_path / 'predictions.csv'} lacks {len(missing)} test ids, e.g. {missing[:3]}")
    return frame.loc[list(ids), [f"p_{n}" for n in names]].to_numpy(dtype=np.float64)


def _selected_model(cfg: Config, fold: FoldFolder, num_classes: int) -> Any:
    model = build_model(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": None})}), num_classes
    )
    load_exact(model, fold.checkpoint("best"), use_ema=cfg.train.ema)
    return model.eval()


def _match_images(request: ExplainRequest, manifest: pd.DataFrame) -> set[str]:
    """Ids of the requested images (given as ids or paths); unknown ones are a clear error."""
    by_path = {str(Path(p).resolve()): i for p, i in zip(manifest["path"], manifest["id"], strict=True)}
    known = set(manifest["id"])
    found, unknown = set(), []
    for item in request.images:
        if item in known:
            found.add(item)
        elif str(Path(item).resolve()) in by_path:
            found.add(by_path[str(Path(item).resolve())])
        else:
            unknown.append(item)
    if unknown:
        raise DataError(
            f"--images: {unknown[:5]} are not images of this run (neither an id nor a path in its manifest.csv); "
            "each image is explained by the fold model that never saw it, so only the run's own images qualify"
        )
    return found


def _lesion_ids(cases: Sequence[Case]) -> list[str]:
    out = []
    for case in cases:
        if case.mask_paths:
            shape = read_mask(case.mask_paths[0]).shape
            if mask_union(list(case.mask_paths), shape).any():
                out.append(case.case_id)
    return out


def explain_run(run_dir: str | Path, request: ExplainRequest | None = None) -> dict[str, Any]:
    """Explain the finished folds of ``run_dir`` and pool them; returns counts, seconds and the summary."""
    request = request or ExplainRequest()
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    start = time.perf_counter()
    cfg = load_saved_config(run_dir)
    data = _prepared(run_dir, cfg)
    folds = list(request.folds) if request.folds is not None else list(range(cfg.splits.k))
    done = [f for f in folds if run.fold(f).done]
    if not done:
        raise ConfigError(f"no finished fold among {folds} in {run_dir}: run `medsg run` first")
    wanted = _match_images(request, data.manifest) if request.images else set()
    factory = ManifestFolds(cfg, data, run_dir)
    per_fold: dict[int, tuple[Any, list[Case]]] = {}
    for fold in done:
        ids = factory.fold_ids(fold)["test"]
        probs = _probabilities(run.fold(fold).path, ids, data.class_names)
        rows = data.manifest.set_index("id", drop=False).loc[ids]
        per_fold[fold] = (ids, cases_from_manifest(rows, ids, probs, fold, cfg.splits.grouping))
    all_cases = [c for _, cases in per_fold.values() for c in cases]
    lesions = _lesion_ids(all_cases)
    rng = np.random.default_rng(request.seed)
    n_free = min(request.gradient_free_cases, len(lesions))
    free_ids = (
        frozenset(rng.choice(sorted(lesions), size=n_free, replace=False).tolist()) if n_free else frozenset()
    )
    settings = ExplainSettings(
        deletion_steps=request.deletion_steps, batch_size=min(cfg.train.batch_size, 16)
    )
    n_review = cfg.explain.cases_per_fold if request.cases_per_fold is None else request.cases_per_fold
    folders = []
    for fold in done:
        ids, cases = per_fold[fold]
        if wanted:
            review = frozenset(i for i in ids if i in wanted)
        else:
            picked = pick_cases(ids, [c.label for c in cases], n_review)
            review = frozenset(ids[i] for i in picked)
        model = _selected_model(cfg, run.fold(fold), len(data.class_names))
        fold_data = factory(fold, model)
        out = run.fold(fold).file(EXPLAIN_DIR)
        counts = explain_cases(
            model, fold_data.test, cases, out, data.class_names, review, settings, free_ids
        )
        log.info("fold %d: %d lesion images scored in %.0f s", fold, counts["n_scored"], counts["seconds"])
        folders.append(out)
    title = f"{cfg.experiment.name}: explanations of out-of-fold test cases"
    critical = review_critical_class(cfg, folders)
    result = collect_explanations(
        folders, run_dir / EXPLAIN_DIR, title, cfg.eval.bootstrap, cfg.experiment.seed, critical
    )
    result["seconds_total"] = round(time.perf_counter() - start, 1)
    result["gradient_free_cases"] = n_free
    return result
