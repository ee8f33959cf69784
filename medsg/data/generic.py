"""Datasets without a dedicated adapter: an ImageFolder tree or a CSV listing.

ImageFolder: ``root/<class>/<image>``; classes are the sorted folder names (torchvision's convention), ids are
``<class>/<file name>``. CSV: columns ``path,label`` plus optional ``id``, ``group`` and ``mask`` (several mask
paths joined by ``;``); relative paths are resolved against the CSV's folder; labels are class names and the
class order is their sorted set (integers sort numerically). Any other column (``patient_id``, ``site``, ...)
is passed through to the manifest as a str column, so ``splits.grouping: patient_id`` can group by it; only
the manifest's own derived names (``label_name``, ``mask_paths``) are refused, being ambiguous.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsg.data.manifest import MASK_SEP, class_folder_rows, make_manifest, sorted_class_dirs
from medsg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CSV_REQUIRED = ("path", "label")
CSV_OPTIONAL = ("id", "group", "mask")
CSV_RESERVED = ("label_name", "mask_paths")  # manifest columns derived from label/mask, not user input


def imagefolder_class_names(root: str | Path | None) -> list[str]:
    """Sorted class folder names of an ImageFolder tree."""
    if root is None:
        raise DataError("imagefolder: class names depend on the dataset; pass its root folder.")
    return sorted_class_dirs(Path(root).expanduser())


def load_imagefolder(root: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    """Manifest of ``root/<class>/<image>``; ``classes`` fixes the order (and must match the folders)."""
    root = Path(root).expanduser().resolve()
    found = sorted_class_dirs(root, classes)
    order = list(classes) if classes is not None else found
    if not order:
        raise DataError(f"{root}: no class sub-folders found; expected root/<class>/<image>.")
    return make_manifest(class_folder_rows(root, order, IMAGE_SUFFIXES, "imagefolder", id_with_suffix=True))


def _read_csv(path: str | Path) -> tuple[Path, pd.DataFrame]:
    """(resolved path, table of str cells) of a CSV listing, with its columns checked."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(
            f"CSV manifest not found: {path}. For adapter 'csv', root must be the CSV file itself."
        )
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in CSV_REQUIRED if c not in table.columns]
    reserved = [c for c in table.columns if c in CSV_RESERVED]
    if missing or reserved:
        raise DataError(
            f"{path}: expected columns {list(CSV_REQUIRED)} plus optional {list(CSV_OPTIONAL)} and any extra "
            f"columns; missing {missing}, not allowed {reserved} (derived by medsg: rename or drop them)."
        )
    empty = (table["label"] == "") | (table["path"] == "")
    if empty.any():
        lines = (table.index[empty][:5] + 2).tolist()  # +2: 1-based, after the header line
        raise DataError(
            f"{path}: empty 'path' or 'label' cell on line(s) {lines}; fill them or drop the rows."
        )
    return path, table


def _sorted_labels(values: pd.Series) -> list[str]:
    """Distinct labels, sorted; numerically when all are integers (so "10" follows "9")."""
    labels = sorted(set(values))
    if all(v.lstrip("-").isdigit() for v in labels):
        labels = sorted(labels, key=int)
    return labels


def csv_class_names(root: str | Path | None) -> list[str]:
    """Class order of a CSV manifest: its sorted label values."""
    if root is None:
        raise DataError("csv: class names depend on the dataset; pass the CSV path.")
    return _sorted_labels(_read_csv(root)[1]["label"])


def load_csv(root: str | Path) -> pd.DataFrame:
    """Manifest from a CSV listing (``root`` is the CSV file)."""
    path, table = _read_csv(root)
    base = path.parent
    classes = _sorted_labels(table["label"])

    def resolve(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    extras = [c for c in table.columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
    rows = []
    for _, row in table.iterrows():
        masks = [resolve(m) for m in row.get("mask", "").split(MASK_SEP) if m.strip()]
        rows.append(
            {
                "id": row["id"] if row.get("id") else row["path"],
                "path": resolve(row["path"]),
                "label": classes.index(row["label"]),
                "label_name": row["label"],
                "group": row.get("group") or None,
                "mask_paths": masks,
            }
            | {c: row[c] for c in extras}
        )
    return make_manifest(rows)
