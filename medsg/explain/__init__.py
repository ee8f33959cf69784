"""Explanations for SG-Former predictions: significance maps, token allocation, Grad-CAM, scores, review page.

``train/`` calls this package after each fold's test prediction; ``medsg explain`` calls it on any run folder.
Nothing here imports ``train/``. Names load on first use, so ``import medsg`` stays light (no matplotlib, no
pytorch-grad-cam until an explanation is made).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "find_sgformer": "significance",
    "significance_maps": "significance",
    "stage_maps": "significance",
    "fused_map": "significance",
    "allocation_rules": "allocation",
    "token_allocation": "allocation",
    "compute_cams": "cam",
    "cam_target_layers": "cam",
    "Case": "cases",
    "ExplainSettings": "cases",
    "cases_from_manifest": "cases",
    "explain_cases": "cases",
    "explain_test_fold": "cases",
    "pick_cases": "cases",
    "EXPLAIN_DIR": "cases",
    "collect_explanations": "collect",
    "fold_explain_dirs": "collect",
    "write_review_page": "review",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medsg.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medsg.explain.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
