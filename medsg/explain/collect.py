"""One run's explanations in one place: every fold's scores pooled with grouped CIs, and the review page.

Each fold writes its own ``fold_K/explain/`` (so folds can run as separate jobs); ``collect_explanations``
pools them into ``<out>/localization.csv``, ``<out>/localization_summary.csv`` and ``<out>/review.html``.
The 95 % CIs resample the groups the split used (duplicate clusters, lesions, patients), never single images,
so near-duplicates of one lesion cannot narrow them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medsg.config import DEFAULT_BOOTSTRAP
from medsg.core.io import atomic_write_text, read_json
from medsg.data.images import read_image
from medsg.data.transforms import mask_union
from medsg.explain.cases import BASELINES, EXPLAIN_DIR, MAP_LABELS
from medsg.explain.localization import DEFINITIONS, summarise_scores
from medsg.explain.overlay import allocation_rgb, colorbar_png, heatmap_rgba, outline_rgba, png_bytes
from medsg.explain.review import ReviewCase, write_review_page

log = logging.getLogger(__name__)

__all__ = ["EXPLAIN_DIR", "collect_explanations", "fold_explain_dirs", "review_cases"]

REVIEW_MAX_SIDE = 384  # review images are shrunk to this longest side so the page stays small
REVIEW_MAPS = ("significance", "allocation", "gradcam", "gradcam++", "gradcam_true", "scorecam")
MAP_DESCRIPTIONS = {
    "significance": "SG-Former's own token importance: mean attention each token receives in the hybrid blocks, "
    "fused over stages 1-3 (each stage map min-max scaled, then averaged). Class-agnostic.",
    "allocation": "Where SG-Former spent its tokens in stage 1: fine (yellow), medium (teal) or coarse (purple) "
    "merging of tokens into keys. Follows the significance ranking, so it adds no independent evidence.",
    "gradcam": "Grad-CAM for the predicted class at the last stage (gradient-weighted activations).",
    "gradcam++": "Grad-CAM++ for the predicted class at the last stage.",
    "gradcam_true": "Grad-CAM for the true class (equal to the predicted-class map when the prediction is right).",
    "scorecam": "Score-CAM (gradient-free) for the predicted class.",
}


def fold_explain_dirs(run_dir: Path) -> list[Path]:
    """``fold_K/explain`` folders that hold a finished explanation, in fold order."""
    found = [p.parent for p in Path(run_dir).glob(f"fold_*/{EXPLAIN_DIR}/explain.json")]
    return sorted(found, key=lambda p: int(p.parent.name.split("_")[-1]))


def _review_size(hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a review image: the original's, shrunk to ``REVIEW_MAX_SIDE`` at most."""
    height, width = hw
    scale = min(1.0, REVIEW_MAX_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _original_png(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    """The original, shrunk to the review size (the lesion outline is a layer of its own, above the maps)."""
    return png_bytes(np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR)))


def _outline_png(entry: dict[str, Any], hw: tuple[int, int], size: tuple[int, int]) -> bytes | None:
    """The lesion outline at review size on a transparent layer, or None without a known mask."""
    if not entry.get("has_mask"):
        return None
    mask = mask_union(entry["mask_paths"], hw)
    if not mask.any():
        return None
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    return png_bytes(outline_rgba(small))


def _heatmaps(folder: Path, entry: dict[str, Any], size: tuple[int, int]) -> dict[str, bytes]:
    """Colour-mapped heatmaps (review size) of a case's saved maps, in ``REVIEW_MAPS`` order."""
    out: dict[str, bytes] = {}
    maps = folder / entry["maps"]
    for name in REVIEW_MAPS:
        if name == "allocation":
            if not entry.get("allocation"):
                continue
            key = entry["allocation"][0]  # the first guided block: stage 1, the finest grid
            levels = np.load(maps / f"{key}.npy")
            names = entry["allocation_levels"][key]
            big = Image.fromarray(levels.astype(np.uint8)).resize(size, Image.NEAREST)
            out["token allocation"] = png_bytes(allocation_rgb(np.asarray(big), names))
            continue
        if name not in entry.get("map_types", []):
            continue
        values = np.load(maps / f"{name}.npy")
        small = np.asarray(Image.fromarray(values.astype(np.float32)).resize(size, Image.BILINEAR))
        out[MAP_LABELS[name]] = png_bytes(heatmap_rgba(small))
    return out


def review_cases(folders: Sequence[Path], class_names: Sequence[str]) -> list[ReviewCase]:
    """The review cards of every folder's ``cases.json`` (original, lesion outline, heatmaps, prediction)."""
    cards = []
    for folder in folders:
        for entry in read_json(folder / "cases.json"):
            pixels = read_image(entry["path"])
            size = _review_size(pixels.shape[:2])
            pred = int(np.argmax(entry["probs"]))
            cards.append(
                ReviewCase(
                    case_id=str(entry["case_id"]),
                    fold=entry.get("fold"),
                    true_class=None if entry.get("label") is None else class_names[int(entry["label"])],
                    predicted_class=class_names[pred],
                    probability=float(entry["probs"][pred]),
                    image_png=_original_png(pixels, size),
                    heatmaps=_heatmaps(folder, entry, size),
                    note=entry.get("note", ""),
                    outline_png=_outline_png(entry, pixels.shape[:2], size),
                    calibrated=False,  # a fold's cases.json holds its raw test probabilities
                )
            )
    return cards


def _panels(folders: Sequence[Path]) -> list[Path]:
    """Every review panel, classes taking turns (first case of each class across folds, then the second...)."""
    by_label: dict[Any, list[Path]] = {}
    for folder in folders:
        for entry in read_json(folder / "cases.json"):
            by_label.setdefault(entry.get("label"), []).append(folder / entry["panel"])
    queues = [by_label[k] for k in sorted(by_label, key=lambda k: (k is None, k))]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def collect_explanations(
    folders: Sequence[Path],
    out_dir: Path,
    title: str,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    critical_class: str | None = None,
) -> dict[str, Any]:
    """Pool the folds' explanations into ``out_dir``; returns counts, seconds and the summary table.
    ``critical_class`` is the review page's default outcome class (malignant, MEL)."""
    out_dir = Path(out_dir)
    frames = [pd.read_csv(f / "localization.csv", dtype={"case_id": str, "group": str}) for f in folders]
    frames = [f for f in frames if not f.empty]
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    stats = [read_json(f / "explain.json") for f in folders]
    class_names = stats[0]["class_names"] if stats else []
    totals = {
        k: sum(s.get(k, 0) for s in stats) for k in ("n_cases", "n_scored", "n_without_lesion", "seconds")
    }
    totals["n_without_mask_files"] = sum(s.get("n_without_mask_files", 0) for s in stats)
    summary = pd.DataFrame()
    if not scores.empty:
        atomic_write_text(out_dir / "localization.csv", scores.to_csv(index=False))
        summary = summarise_scores(scores, group_col="group", n_resamples=n_bootstrap, seed=seed)
        summary.insert(1, "map", [MAP_LABELS.get(m, m) for m in summary["map_type"]])
        summary.insert(
            2, "kind", ["baseline" if m in BASELINES else "explanation" for m in summary["map_type"]]
        )
        atomic_write_text(out_dir / "localization_summary.csv", summary.to_csv(index=False))
    cards = [card for card in review_cases(folders, class_names) if card.heatmaps]
    if not cards:
        log.info("no review page: no review case has a map (this model gives neither significance nor CAMs)")
    else:
        descriptions = {MAP_LABELS.get(k, k): v for k, v in MAP_DESCRIPTIONS.items()}
        descriptions["token allocation"] = MAP_DESCRIPTIONS["allocation"]
        write_review_page(
            out_dir / "review.html", cards, class_names, title, descriptions, colorbar_png(), critical_class
        )
    totals["n_review_cases"] = len(cards)
    record = {
        **totals,
        "class_names": list(class_names),
        "definitions": DEFINITIONS,
        "ci": f"percentile bootstrap 95 % CI over {n_bootstrap} resamples of the split's groups (seed {seed})",
        "map_labels": {k: MAP_LABELS[k] for k in summary.get("map_type", []) if k in MAP_LABELS},
        "review_panels": [os.path.relpath(p, out_dir) for p in _panels(folders)],
    }
    atomic_write_text(out_dir / "explain.json", json.dumps(record, indent=1))
    log.info(
        "explanations: %d cases scored against lesion masks (%d without a lesion excluded), %d review cards in %s",
        totals["n_scored"],
        totals["n_without_lesion"],
        len(cards),
        out_dir,
    )
    return {**totals, "summary": summary}
