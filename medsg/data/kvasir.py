"""Kvasir v2 (Pogorelov et al. 2017) in its downloaded layout: ``kvasir-dataset-v2/<class>/<uuid>.jpg``.

Eight classes of 1000 JPEGs each; the class order is alphabetical (the folder sort). Ids are
``<class>/<file stem>`` so they stay unique even if two folders reuse a file name. No patient ids are
published, so ``group`` is the image id until the audit merges duplicates.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsg.core.errors import DataError
from medsg.data.manifest import class_folder_rows, make_manifest, sorted_class_dirs

KVASIR_CLASSES: tuple[str, ...] = (
    "dyed-lifted-polyps",
    "dyed-resection-margins",
    "esophagitis",
    "normal-cecum",
    "normal-pylorus",
    "normal-z-line",
    "polyps",
    "ulcerative-colitis",
)
KVASIR_FOLDER = "kvasir-dataset-v2"
IMAGE_SUFFIXES = (".jpg", ".jpeg")


def kvasir_class_names(root: str | Path | None = None) -> list[str]:
    """Kvasir v2's fixed class order (alphabetical)."""
    return list(KVASIR_CLASSES)


def resolve_kvasir_root(root: str | Path) -> Path:
    """Accept the folder holding ``kvasir-dataset-v2`` or that folder itself."""
    root = Path(root).expanduser()
    if (root / KVASIR_FOLDER).is_dir():
        return (root / KVASIR_FOLDER).resolve()
    if root.is_dir():
        return root.resolve()
    raise DataError(f"Kvasir not found at {root}: expected {root / KVASIR_FOLDER} with 8 class folders.")


def load_kvasir(root: str | Path) -> pd.DataFrame:
    """Manifest of Kvasir v2 (8000 rows for the official release)."""
    base = resolve_kvasir_root(root)
    sorted_class_dirs(base, KVASIR_CLASSES)
    return make_manifest(
        class_folder_rows(base, KVASIR_CLASSES, IMAGE_SUFFIXES, "Kvasir", id_with_suffix=False)
    )
