"""Every explanation of a set of cases: the maps, their scores against lesion masks, and the panels.

``explain_cases`` is the one code path behind ``medsg run`` (each fold explains its own test cases) and
``medsg explain`` (any run folder, any cases): it computes the maps of each case on the model input, maps them
back onto the original image (``geometry``), scores the ones with a lesion mask (``localization``), and writes a
panel plus the raw maps for the cases chosen for review.

Map types (the names used in ``localization.csv``):

* ``significance``: SG-Former's fused significance (see ``medsg.explain.significance``); ``significance_stage1``
  .. ``significance_stage3`` per stage;
* ``gradcam`` and ``gradcam++`` for the predicted class; ``gradcam_true`` and ``gradcam++_true`` for the true class
  (the same maps when the prediction is right); ``scorecam`` (gradient-free) on a chosen subset;
* baselines: ``baseline_uniform``, ``baseline_centre`` (a centred Gaussian: lesions in BUSI sit near the centre,
  so a map must beat it to show it found the lesion rather than the middle) and ``baseline_random``.

Token allocation is drawn on the panels and saved, but not scored: it is a function of the significance ranking.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from medsg.core.io import atomic_write_bytes, atomic_write_text, publish_dir, staging_dir
from medsg.data.dataset import plain_tensor
from medsg.data.images import read_image
from medsg.data.manifest import mask_list
from medsg.data.transforms import mask_union
from medsg.explain import localization
from medsg.explain.allocation import allocation_rules, token_allocation
from medsg.explain.cam import compute_cams
from medsg.explain.geometry import resize_geometry, to_original
from medsg.explain.overlay import panel_png
from medsg.explain.significance import find_sgformer, fused_map, significance_maps, stage_maps, upsample

log = logging.getLogger(__name__)

__all__ = [
    "EXPLAIN_DIR",
    "Case",
    "ExplainSettings",
    "CaseMaps",
    "MAP_LABELS",
    "BASELINES",
    "explain_cases",
    "explain_test_fold",
    "cases_from_manifest",
    "case_maps",
    "pick_cases",
    "safe_name",
]

EXPLAIN_DIR = "explain"  # a fold's explanations: fold_K/explain/; a run's pooled ones: <run_dir>/explain/
MAP_LABELS = {
    "significance": "SG-Former significance (fused)",
    "significance_stage1": "significance, stage 1",
    "significance_stage2": "significance, stage 2",
    "significance_stage3": "significance, stage 3",
    "gradcam": "Grad-CAM (predicted class)",
    "gradcam++": "Grad-CAM++ (predicted class)",
    "gradcam_true": "Grad-CAM (true class)",
    "gradcam++_true": "Grad-CAM++ (true class)",
    "scorecam": "Score-CAM (predicted class)",
    "baseline_uniform": "baseline: uniform",
    "baseline_centre": "baseline: centred Gaussian",
    "baseline_random": "baseline: random",
}
BASELINES = ("baseline_uniform", "baseline_centre", "baseline_random")
PANEL_MAPS = ("significance", "gradcam", "gradcam++")  # token allocation is drawn after the first
SCORE_COLUMNS = ("pointing", "energy", "iou", "deletion_auc")


@dataclass(frozen=True)
class Case:
    """One image to explain. ``label`` is None when unknown; ``group`` is what the split grouped it by."""

    case_id: str
    path: str
    probs: tuple[float, ...]
    mask_paths: tuple[str, ...] = ()
    label: int | None = None
    group: str = ""
    fold: int | None = None

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))


@dataclass(frozen=True)
class ExplainSettings:
    """What to compute: CAM methods (predicted and true class), deletion steps (0: off), batch size."""

    cams: tuple[str, ...] = ("gradcam", "gradcam++")
    true_class_cams: bool = True
    deletion_steps: int = 20
    batch_size: int = 16
    gradient_free: str = "scorecam"  # run only on the cases named in ``explain_cases(gradient_free_ids=)``


@dataclass
class CaseMaps:
    """The maps of one case on the model input (H, W), plus the raw per-block maps and token allocation."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    blocks: dict[str, np.ndarray] = field(default_factory=dict)
    allocation: dict[str, np.ndarray] = field(default_factory=dict)
    allocation_levels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allocation_rates: dict[str, tuple[int, ...]] = field(default_factory=dict)  # tokens per key, fine first


def pick_cases(ids: Sequence[str], labels: Sequence[int], n: int) -> list[int]:
    """Positions of up to ``n`` cases: classes take turns (ascending label), sorted ids within each class.

    Deterministic and stratified, so every class of a test fold shows up and a rerun picks the same cases.
    """
    by_class: dict[int, list[tuple[str, int]]] = {}
    for pos, (case_id, label) in enumerate(zip(ids, labels, strict=True)):
        by_class.setdefault(int(label), []).append((str(case_id), pos))
    queues = [sorted(by_class[c]) for c in sorted(by_class)]
    picked: list[int] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        picked.extend(q[rank][1] for q in queues if rank < len(q))
    return picked[: max(n, 0)]


def safe_name(case_id: str) -> str:
    """A file name for a case id: unsafe characters replaced, plus a short hash so two ids never collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._")[:80] or "case"
    return f"{stem}-{zlib.crc32(case_id.encode('utf-8')):08x}"


def _seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode("utf-8"))


# ------------------------------------------------------------------------------------------------ maps


def _significance(model: nn.Module, images: torch.Tensor, out: list[CaseMaps]) -> None:
    """Fill the significance maps, per-block raw maps and token allocation of a batch (SG-Former only)."""
    size = tuple(images.shape[-2:])
    blocks = significance_maps(model, images)
    fused = fused_map(blocks, size).cpu().numpy()
    stages = {k: upsample(v, size).cpu().numpy() for k, v in stage_maps(blocks).items()}
    rules = allocation_rules(model)
    allocations = {}
    for (name, values), rule in zip(blocks.items(), rules, strict=False):
        stage, index = name.removeprefix("block").split(".")
        key = f"allocation_block{stage}.{int(index) + 1}"
        rates = tuple(rule.tokens_at(level) for level in range(len(rule.level_names)))
        allocations[key] = (token_allocation(values.float().cpu(), rule).numpy(), rule.level_names, rates)
    for i, case in enumerate(out):
        case.maps["significance"] = fused[i]
        for stage, values in stages.items():
            case.maps[f"significance_{stage}"] = values[i]
        case.blocks = {k: v[i].float().cpu().numpy() for k, v in blocks.items()}
        for key, (levels, names, rates) in allocations.items():
            case.allocation[key] = levels[i]
            case.allocation_levels[key] = tuple(names)
            case.allocation_rates[key] = rates


def case_maps(
    model: nn.Module,
    images: torch.Tensor,
    cases: Sequence[Case],
    settings: ExplainSettings,
    gradient_free_ids: frozenset[str] = frozenset(),
) -> list[CaseMaps]:
    """Every map of a batch of cases on the model input; ``images`` are the normalised inputs (B, 3, H, W)."""
    model.eval()
    out = [CaseMaps() for _ in cases]
    if find_sgformer(model) is not None:
        _significance(model, images, out)
    predicted = [c.predicted for c in cases]
    try:
        cams = compute_cams(model, images, predicted, settings.cams, batch_size=settings.batch_size)
    except (TypeError, ValueError) as exc:  # no usable target layer (e.g. a ViT's class token): maps go on
        _warn_once(f"no CAMs for {type(model).__name__}: {exc}")
        return out
    for method, values in cams.items():
        for i, case in enumerate(out):
            case.maps[method] = values[i]
    if settings.true_class_cams:
        wrong = [i for i, c in enumerate(cases) if c.label is not None and c.label != c.predicted]
        true_cams = {}
        if wrong:
            targets = [int(cases[i].label) for i in wrong]
            true_cams = compute_cams(
                model, images[wrong], targets, settings.cams, batch_size=settings.batch_size
            )
        for method in settings.cams:
            for i, case in enumerate(out):
                if cases[i].label is None:
                    continue
                case.maps[f"{method}_true"] = (
                    true_cams[method][wrong.index(i)] if i in wrong else case.maps[method]
                )
    chosen = [i for i, c in enumerate(cases) if c.case_id in gradient_free_ids]
    if chosen and settings.gradient_free:
        method = settings.gradient_free
        values = compute_cams(
            model, images[chosen], [predicted[i] for i in chosen], (method,), batch_size=settings.batch_size
        )[method]
        for k, i in enumerate(chosen):
            out[i].maps[method] = values[k]
    return out


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


def _baseline(name: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    if name == "baseline_uniform":
        return localization.uniform_map(shape)
    if name == "baseline_centre":
        return localization.centre_gaussian_map(shape)
    return localization.random_map(shape, seed=seed)


# ------------------------------------------------------------------------------------------------ scoring


def _predictor(model: nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(batch: torch.Tensor) -> np.ndarray:
        return torch.softmax(model(batch.to(device)).float(), dim=1).cpu().numpy()

    return predict


def _score_case(
    case: Case,
    maps: CaseMaps,
    image: torch.Tensor,
    mask: np.ndarray,
    predict: Callable[[torch.Tensor], np.ndarray],
    settings: ExplainSettings,
) -> list[dict[str, Any]]:
    """One row per map type: pointing, energy and IoU on the original geometry, deletion AUC on the input."""
    geometry = resize_geometry(mask.shape, tuple(image.shape[-2:]))
    seed = _seed(case.case_id)
    rows = []
    names = list(maps.maps) + list(BASELINES)
    for name in names:
        on_input = maps.maps.get(name)
        if on_input is None:
            on_input = _baseline(name, geometry.input_hw, seed)
            on_original = _baseline(name, geometry.original_hw, seed)
        else:
            on_original = to_original(on_input, geometry)
        row: dict[str, Any] = {"map_type": name, **localization.score_map(on_original, mask)}
        # deletion removes what the map ranks highest and watches the predicted class's probability fall;
        # for the true-class CAMs of a wrong prediction that curve would answer another question
        if settings.deletion_steps > 0 and not name.endswith("_true"):
            row["deletion_auc"] = localization.deletion_auc(
                predict, image, on_input, case.predicted, steps=settings.deletion_steps, seed=seed
            )
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ driver


def _read_original(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """The original image (H, W, 3) uint8 and its lesion mask (None without mask files)."""
    image = read_image(case.path)  # the pipeline's own reader: DICOM, 16-bit, EXIF ... as the model saw them
    mask = mask_union(list(case.mask_paths), image.shape[:2]) if case.mask_paths else None
    return image, mask


def _save_case(
    out_dir: Path,
    case: Case,
    maps: CaseMaps,
    image: np.ndarray,
    mask: np.ndarray | None,
    class_names: Sequence[str],
    input_hw: tuple[int, int],
) -> dict[str, Any]:
    """Write the panel and the raw maps of a review case; returns its entry for ``cases.json``."""
    name = safe_name(case.case_id)
    geometry = resize_geometry(image.shape[:2], input_hw)
    on_original = {k: to_original(v, geometry) for k, v in maps.maps.items()}
    map_dir = out_dir / "maps" / name
    for key, values in {**on_original, **maps.blocks}.items():
        _save_npy(map_dir / f"{key}.npy", values.astype(np.float32))
    allocation = None
    for key, levels in maps.allocation.items():
        _save_npy(map_dir / f"{key}.npy", levels.astype(np.int8))
        if allocation is None:  # the first guided block: stage 1, the finest token grid
            big = np.asarray(
                Image.fromarray(levels.astype(np.uint8)).resize(image.shape[1::-1], Image.NEAREST)
            )
            stage = key.removeprefix("allocation_block").split(".")[0]
            names = maps.allocation_levels[key]
            labels = [f"{n}: {t} tokens/key" for n, t in zip(names, maps.allocation_rates[key], strict=True)]
            allocation = (f"token allocation (stage {stage})", big, names, labels)
    pred = case.predicted
    true = "unknown" if case.label is None else class_names[case.label]
    title = f"{case.case_id}   true: {true}   predicted: {class_names[pred]} ({case.probs[pred]:.0%})"
    if case.fold is not None:
        title += f"   fold {case.fold}"
    shown = {MAP_LABELS[k]: on_original[k] for k in PANEL_MAPS if k in on_original}
    png = panel_png(
        image,
        mask,
        shown,
        title,
        allocation=allocation,
        footnote="each map min-max scaled per image (viridis, low to high); "
        "token allocation follows the significance ranking and adds no independent evidence",
    )
    panel = out_dir / "panels" / f"{name}.png"
    atomic_write_bytes(panel, png)
    return {
        **{k: v for k, v in asdict(case).items() if k != "mask_paths"},
        "has_mask": mask is not None and bool(mask.any()),
        "mask_paths": list(case.mask_paths),
        "panel": str(panel.relative_to(out_dir)),
        "maps": str(map_dir.relative_to(out_dir)),
        "map_types": sorted(on_original),
        "allocation": sorted(maps.allocation),
        "allocation_levels": {k: list(v) for k, v in maps.allocation_levels.items()},
    }


def _save_npy(path: Path, values: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, values)
    atomic_write_bytes(path, buffer.getvalue())


def _input_image(dataset: Any, index: int, case: Case) -> torch.Tensor:
    """Case ``index``'s normalised model input from ``dataset``, checked to be that case."""
    sample = dataset[index]
    if str(sample["id"]) != case.case_id:
        raise RuntimeError(f"dataset item {index} is {sample['id']!r}, expected case {case.case_id!r}")
    return plain_tensor(sample["image"]).float()


def explain_cases(
    model: nn.Module,
    dataset: Any,
    cases: Sequence[Case],
    out_dir: Path,
    class_names: Sequence[str],
    review_ids: frozenset[str] = frozenset(),
    settings: ExplainSettings | None = None,
    gradient_free_ids: frozenset[str] = frozenset(),
    score: bool = True,
) -> dict[str, Any]:
    """Explain ``cases`` (``dataset[i]`` is case i through the eval transform) and write ``out_dir``:

    ``localization.csv`` (one row per scored case and map type: cases with a non-empty lesion mask; none
    without ``score``, so a review-only run reports no localisation from its few picks),
    ``cases.json`` (the review cases: metadata, panel and raw-map paths), ``panels/`` and ``maps/``.
    Returns a summary: counts and seconds.
    """
    settings = settings or ExplainSettings()
    final_dir = Path(out_dir)
    out_dir = staging_dir(final_dir)
    start = time.perf_counter()
    predict = _predictor(model)
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    reviewed: list[dict[str, Any]] = []
    counts = {"n_cases": len(cases), "n_scored": 0, "n_without_lesion": 0}
    wanted = [i for i, c in enumerate(cases) if (score and c.mask_paths) or c.case_id in review_ids]
    fold = next((c.fold for c in cases if c.fold is not None), None)
    bar = tqdm(
        total=len(wanted),
        desc="explain" + ("" if fold is None else f" fold {fold}"),
        unit="img",
        disable=None,
    )
    for begin in range(0, len(wanted), max(settings.batch_size, 1)):
        chunk = wanted[begin : begin + settings.batch_size]
        batch_cases = [cases[i] for i in chunk]
        batch = torch.stack([_input_image(dataset, i, cases[i]) for i in chunk]).to(device)
        all_maps = case_maps(model, batch, batch_cases, settings, gradient_free_ids)
        for case, maps, image in zip(batch_cases, all_maps, batch, strict=True):
            original, mask = _read_original(case)
            if score and mask is not None and mask.any():
                for row in _score_case(case, maps, image, mask, predict, settings):
                    rows.append(_row(case, row, mask))
                counts["n_scored"] += 1
            elif score and mask is not None:
                counts["n_without_lesion"] += 1
            if case.case_id in review_ids:
                hw = (int(batch.shape[-2]), int(batch.shape[-1]))
                reviewed.append(_save_case(out_dir, case, maps, original, mask, class_names, hw))
        bar.update(len(chunk))
    bar.close()
    counts["n_without_mask_files"] = sum(1 for c in cases if not c.mask_paths)
    frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
    atomic_write_text(out_dir / "localization.csv", frame.to_csv(index=False))
    atomic_write_text(out_dir / "cases.json", json.dumps(reviewed, indent=1))
    counts["seconds"] = round(time.perf_counter() - start, 2)
    counts["class_names"] = list(class_names)
    atomic_write_text(out_dir / "explain.json", json.dumps(counts, indent=1))
    publish_dir(out_dir, final_dir)
    return counts


_ROW_COLUMNS = [
    "fold",
    "case_id",
    "group",
    "label",
    "predicted",
    "lesion_share",
    "map_type",
    *SCORE_COLUMNS,
]


def _row(case: Case, scores: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    return {
        "fold": case.fold,
        "case_id": case.case_id,
        "group": case.group,
        "label": case.label,
        "predicted": case.predicted,
        "lesion_share": float(mask.mean()),
        **scores,
    }


def cases_from_manifest(
    rows: pd.DataFrame,
    ids: Sequence[str],
    probs: np.ndarray,
    fold: int | None = None,
    group_col: str = "group",
    with_labels: bool = True,
) -> list[Case]:
    """``Case`` objects for ``ids`` (in that order) from manifest rows indexed by id, with their probabilities."""
    missing = [i for i in ids if i not in rows.index]
    if missing:
        raise KeyError(f"{len(missing)} ids are not in the manifest, e.g. {missing[:3]}")
    group_col = group_col if group_col in rows.columns else "group"
    return [
        Case(
            case_id=str(case_id),
            path=str(rows.at[case_id, "path"]),
            probs=tuple(float(p) for p in probs[i]),
            mask_paths=tuple(mask_list(rows.at[case_id, "mask_paths"])),
            label=int(rows.at[case_id, "label"]) if with_labels else None,
            group=str(rows.at[case_id, group_col]),
            fold=fold,
        )
        for i, case_id in enumerate(ids)
    ]


def explain_test_fold(
    model: nn.Module,
    dataset: Any,
    cases: Sequence[Case],
    out_dir: Path,
    class_names: Sequence[str],
    n_review: int,
    localization: bool = True,
    settings: ExplainSettings | None = None,
) -> dict[str, Any]:
    """A fold's explanations: ``n_review`` stratified review cases (``pick_cases``) and, with
    ``localization``, the scores of every case that has a lesion mask."""
    picked = pick_cases([c.case_id for c in cases], [c.label or 0 for c in cases], n_review)
    review_ids = frozenset(cases[i].case_id for i in picked)
    if not localization:
        keep = sorted(picked)
        cases = [cases[i] for i in keep]
        dataset = _Subset(dataset, keep)
    return explain_cases(
        model, dataset, cases, out_dir, class_names, review_ids, settings, score=localization
    )


class _Subset:
    """``dataset`` seen through a list of positions (only ``__getitem__`` and ``__len__``)."""

    def __init__(self, dataset: Any, positions: Sequence[int]) -> None:
        self.dataset, self.positions = dataset, list(positions)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.positions[index]]

    def __len__(self) -> int:
        return len(self.positions)
