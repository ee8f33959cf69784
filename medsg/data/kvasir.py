"""Kvasir v2 (Pogorelov et al. 2017) in its downloaded layout: ``kvasir-dataset-v2/<class>/<uuid>.jpg``.

Eight classes of 1000 JPEGs each; the class order is alphabetical (the folder sort). Ids are
``<class>/<file stem>`` so they stay unique even if two folders reuse a file name. No patient ids are
published, so ``group`` is the image id until the audit merges duplicates.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsg.data.manifest import list_image_files, make_manifest, sorted_class_dirs
from medsg.errors import DataError

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
    rows = []
    for label, name in enumerate(KVASIR_CLASSES):
        files = list_image_files(base / name, IMAGE_SUFFIXES, "Kvasir")
        if not files:
            raise DataError(f"Kvasir class folder {base / name} holds no .jpg images.")
        for path in files:
            rows.append({"id": f"{name}/{path.stem}", "path": str(path), "label": label, "label_name": name})
    return make_manifest(rows)
