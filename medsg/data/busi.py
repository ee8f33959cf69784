"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020) in its downloaded layout.

``Dataset_BUSI_with_GT/<class>/<class> (N).png`` beside ``<class> (N)_mask.png`` and, for some images,
``_mask_1.png`` / ``_mask_2.png``; the lesion is the union of an image's masks. Ids are the file stem
(``"benign (433)"``): stable, readable and unique because the class is part of the name. BUSI has no patient
ids, so ``group`` starts as the image id; the audit merges duplicate clusters into groups later.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medsg.core.errors import DataError
from medsg.data.manifest import (
    MASK_RE,
    list_image_files,
    make_manifest,
    natural_key,
    sorted_class_dirs,
)

log = logging.getLogger(__name__)

BUSI_CLASSES: tuple[str, ...] = ("benign", "malignant", "normal")
BUSI_FOLDER = "Dataset_BUSI_with_GT"
IMAGE_SUFFIXES = (".png",)


def busi_class_names(root: str | Path | None = None) -> list[str]:
    """BUSI's fixed class order (alphabetical, as the folders sort)."""
    return list(BUSI_CLASSES)


def resolve_busi_root(root: str | Path) -> Path:
    """Accept the folder holding ``Dataset_BUSI_with_GT`` or that folder itself."""
    root = Path(root).expanduser()
    if (root / BUSI_FOLDER).is_dir():
        return (root / BUSI_FOLDER).resolve()
    if root.is_dir() and all((root / c).is_dir() for c in BUSI_CLASSES):
        return root.resolve()
    raise DataError(
        f"BUSI not found at {root}: expected {root / BUSI_FOLDER} or a folder with sub-folders "
        f"{list(BUSI_CLASSES)}."
    )


def _scan_class(folder: Path) -> tuple[dict[str, Path], dict[str, list[tuple[int, Path]]]]:
    """(image stem -> path, image stem -> [(mask number, mask path)]) of one class folder."""
    images: dict[str, Path] = {}
    masks: dict[str, list[tuple[int, Path]]] = {}
    for path in list_image_files(folder, IMAGE_SUFFIXES, "BUSI"):
        match = MASK_RE.match(path.stem)
        if match:
            order = int(match.group("n")) if match.group("n") else 0
            masks.setdefault(match.group("stem"), []).append((order, path))
        else:
            images[path.stem] = path
    return images, masks


def load_busi(root: str | Path) -> pd.DataFrame:
    """Manifest of BUSI: 780 rows for the official release (benign 437, malignant 210, normal 133)."""
    base = resolve_busi_root(root)
    sorted_class_dirs(base, BUSI_CLASSES)
    rows, orphans = [], []
    for label, name in enumerate(BUSI_CLASSES):
        images, masks = _scan_class(base / name)
        for stem in sorted(set(masks) - set(images), key=natural_key):
            orphans += [str(p) for _, p in sorted(masks[stem])]
            log.warning(
                "BUSI: mask(s) without an image: %s; add the image '%s.png' or delete them",
                [str(p) for _, p in masks[stem]],
                stem,
            )
        if not images:
            raise DataError(f"BUSI class folder {base / name} holds no '<class> (N).png' images.")
        for stem in sorted(images, key=natural_key):
            mask_paths = [str(p) for _, p in sorted(masks.get(stem, []))]
            rows.append(
                {
                    "id": stem,
                    "path": str(images[stem]),
                    "label": label,
                    "label_name": name,
                    "group": stem,
                    "mask_paths": mask_paths,
                }
            )
    df = make_manifest(rows)
    df.attrs["orphan_masks"] = orphans  # the audit reports them by name
    return df
