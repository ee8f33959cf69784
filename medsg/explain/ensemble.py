"""Explanations of a model ensemble (``medsg predict --explain``): the members' maps, averaged.

Each member's maps come from ``case_maps`` (the one code path of ``medsg.explain``), for the class the
*ensemble* predicts. Members' raw maps are on different scales, so each is min-max scaled per image first
(``overlay.scale01``) and the ensemble map is the mean of those: every member weighs the same. The panel says so.
Token allocation is a per-model, categorical map and is not averaged, so ensemble panels leave it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsg.core.io import atomic_write_bytes
from medsg.explain.cases import (
    MAP_LABELS,
    PANEL_MAPS,
    Case,
    ExplainSettings,
    _read_original,  # the original as the explanations read it (one reader for every panel)
    case_maps,
    safe_name,
)
from medsg.explain.geometry import resize_geometry, to_original
from medsg.explain.overlay import panel_png, scale01

__all__ = ["ensemble_maps", "ensemble_panel", "explain_ensemble"]


def ensemble_maps(
    models: Sequence[nn.Module], images: torch.Tensor, cases: Sequence[Case], settings: ExplainSettings
) -> list[dict[str, np.ndarray]]:
    """Per case, {map type: mean over members of the member's min-max-scaled map} on the model input."""
    per_member = [case_maps(model, images, cases, settings) for model in models]
    out = []
    for i in range(len(cases)):
        names = set.intersection(*(set(maps[i].maps) for maps in per_member))
        out.append(
            {k: np.mean([scale01(maps[i].maps[k]) for maps in per_member], axis=0) for k in sorted(names)}
        )
    return out


def ensemble_panel(
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    case: Case,
    class_names: Sequence[str],
    n_models: int,
    input_hw: tuple[int, int],
    flag: str = "",
) -> bytes:
    """The panel of one image: the original, then the ensemble's maps back on the original's geometry; a
    flagged prediction says why on the panel, in the words of predictions.csv's ood_reasons."""
    geometry = resize_geometry(image.shape[:2], input_hw)
    shown = {MAP_LABELS[k]: to_original(maps[k], geometry) for k in PANEL_MAPS if k in maps}
    pred = case.predicted
    title = f"{case.case_id}   predicted: {class_names[pred]} ({case.probs[pred]:.0%}, calibrated)"
    what = (
        f"ensemble of {n_models} models: each map is the mean of the {n_models} models' maps, each min-max "
        "scaled per image first"
        if n_models > 1
        else "one model: each map min-max scaled per image"
    )
    footnote = f"{what} (viridis, low to high)"
    if flag:
        title += "   FLAGGED"
        footnote = f"FLAGGED: {flag}\n{footnote}"
    return panel_png(image, None, shown, title, footnote=footnote)


def explain_ensemble(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    cases: Sequence[Case],
    out_dir: Path,
    class_names: Sequence[str],
    settings: ExplainSettings | None = None,
    flags: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``out_dir/<case>.png`` for a batch of cases; ``images`` are their normalised model inputs and
    ``flags`` each case's ood_reasons ("" when not flagged)."""
    settings = settings or ExplainSettings(true_class_cams=False, deletion_steps=0)
    device = next(models[0].parameters()).device
    all_maps = ensemble_maps(models, images.to(device), cases, settings)
    paths = []
    input_hw = (int(images.shape[-2]), int(images.shape[-1]))
    for case, maps, flag in zip(cases, all_maps, flags or [""] * len(cases), strict=True):
        original, _ = _read_original(case)
        png = ensemble_panel(original, maps, case, class_names, len(models), input_hw, flag)
        paths.append(atomic_write_bytes(Path(out_dir) / f"{safe_name(case.case_id)}.png", png))
    return paths
