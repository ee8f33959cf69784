"""Datasets as manifests: adapters for BUSI, Kvasir v2, ISIC 2018 and generic layouts, audit, splits, pipelines.

Importing this package is cheap: the MONAI pipelines live in ``medsg.data.transforms`` / ``medsg.data.dataset``.
"""

from medsg.data.manifest import (
    COLUMNS,
    adapter_names,
    class_names,
    load_manifest,
    make_manifest,
    mask_list,
    read_manifest,
    save_manifest,
)

__all__ = [
    "COLUMNS",
    "adapter_names",
    "class_names",
    "load_manifest",
    "make_manifest",
    "mask_list",
    "read_manifest",
    "save_manifest",
]
