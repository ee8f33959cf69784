"""Datasets as manifests: adapters for BUSI, Kvasir v2, ISIC 2018 and generic layouts, audit, splits, pipelines.

Everything a user needs is importable from here. Importing this package stays cheap: the audit (PIL
decoding), the splits (scikit-learn) and the MONAI pipelines are imported on first use of one of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from medsg.data.manifest import (
    COLUMNS,
    adapter_names,
    class_names,
    load_manifest,
    make_manifest,
    mask_list,
    read_manifest,
    save_manifest,
    validate_manifest,
)

# names imported on first access (PEP 562), by defining module
_LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "medsg.data.audit": (
        "AuditReport",
        "apply_audit_policy",
        "audit_manifest",
        "read_audit",
        "summarize",
        "write_audit",
    ),
    "medsg.data.splits": (
        "check_no_leakage",
        "inner_split",
        "load_or_create_splits",
        "make_kfold_splits",
        "read_splits",
        "save_splits",
        "split_filename",
    ),
    "medsg.data.images": ("UnreadableImage", "decode_image", "read_image", "read_mask"),
    "medsg.data.transforms": ("aug_defaults", "build_transforms"),
    "medsg.data.dataset": ("build_dataset", "manifest_to_records"),
}
_LAZY: dict[str, str] = {name: module for module, names in _LAZY_MODULES.items() for name in names}

__all__ = [
    "COLUMNS",
    "adapter_names",
    "class_names",
    "load_manifest",
    "make_manifest",
    "mask_list",
    "read_manifest",
    "save_manifest",
    "validate_manifest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'medsg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
