"""Datasets without a dedicated adapter: an ImageFolder tree or a CSV listing.

ImageFolder: ``root/<class>/<image>``; classes are the sorted folder names (torchvision's convention), ids are
``<class>/<file name>``. Images are PNG, JPEG, TIFF, BMP, GIF, WebP, JPEG 2000 or DICOM (``.dcm``, or any file
that is DICOM by content, as PACS exports name them).

CSV: columns ``path,label`` plus optional ``id``, ``group`` and ``mask`` (several mask paths joined by ``;``);
labels are class names and the class order is their sorted set (integers sort numerically). Any other column
(``patient_id``, ``site``, ...) is passed through to the manifest as a str column, so ``splits.grouping:
patient_id`` can group by it; only the manifest's own derived names (``label_name``, ``mask_paths``) are
refused, being ambiguous. The file is read as UTF-8 (a BOM, as Excel writes it, is fine), comma-separated, or
semicolon- / tab-separated when the header line has no comma. Every error names its line: empty cells, a row
with the wrong number of fields, an id listed twice (the ``id`` column, or ``path`` where it is empty).
Relative paths resolve against the CSV's folder; one that climbs out of it (``../..``) is used but named in a
warning, since a listing that reaches outside its folder often points at the wrong copy. Absolute paths are
taken as they are.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsg.core.errors import DataError
from medsg.data.manifest import (
    MASK_SEP,
    class_folder_rows,
    is_image_file,
    lesion_masks,
    make_manifest,
    natural_key,
    sorted_class_dirs,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".webp",
    ".jp2",
    ".dcm",
    ".dicom",
)
CSV_REQUIRED = ("path", "label")
CSV_OPTIONAL = ("id", "group", "mask")
CSV_RESERVED = ("label_name", "mask_paths")  # manifest columns derived from label/mask, not user input
LINE = "_line"  # the table's column holding each row's line number in the file


def imagefolder_class_names(root: str | Path | None, classes: list[str] | None = None) -> list[str]:
    """Sorted class folder names of an ImageFolder tree, or ``classes`` (the order ``load_imagefolder`` gives
    its labels) when given."""
    if root is None:
        raise DataError("imagefolder: class names depend on the dataset; pass its root folder.")
    found = sorted_class_dirs(Path(root).expanduser(), classes)
    return list(classes) if classes is not None else found


def load_imagefolder(root: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    """Manifest of ``root/<class>/<image>``; ``classes`` fixes the order (and must match the folders)."""
    root = Path(root).expanduser().resolve()
    found = sorted_class_dirs(root, classes)
    order = list(classes) if classes is not None else found
    if not order:
        raise DataError(f"{root}: no class sub-folders found; expected root/<class>/<image>.")
    return make_manifest(class_folder_rows(root, order, IMAGE_SUFFIXES, "imagefolder", id_with_suffix=True))


def _text(path: Path) -> str:
    """The CSV's text: UTF-8, with or without Excel's byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 (Excel: 'CSV UTF-8')."
        ) from exc


def _delimiter(text: str) -> str:
    """Comma, unless the header line has none and has a semicolon or a tab (European Excel, TSV)."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return "\t" if "\t" in header else ";" if ";" in header else ","


def csv_records(
    path: Path, required: Sequence[str] = CSV_REQUIRED
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV file; blank lines skipped, cells stripped. UTF-8 with or
    without a BOM; comma, semicolon or tab as the header shows; bad quoting and ragged rows named by line."""
    text = _text(path)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    while True:
        line = reader.line_num + 1  # where the next record starts
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path}: line {line}: {exc}; fix the quoting on that line.") from exc
        cells = [c.strip() for c in cells]
        if not any(cells):
            continue
        if header is None:
            header = cells
            continue
        if len(cells) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(cells)} fields but the header has {len(header)}; quote cells "
                f"that contain {delimiter!r}, or fix the row."
            )
        rows.append((line, cells))
    if header is None:
        raise DataError(f"{path}: the CSV is empty; expected a header line with columns {list(required)}.")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: column(s) {repeated} appear twice in the header; rename them.")
    return header, rows


def _read_csv(path: str | Path) -> tuple[Path, pd.DataFrame]:
    """(resolved path, table of str cells with each row's line number in ``LINE``), columns checked."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(
            f"CSV manifest not found: {path}. For adapter 'csv', root must be the CSV file itself."
        )
    header, records = csv_records(path)
    table = pd.DataFrame([cells for _, cells in records], columns=header, dtype=str)
    missing = [c for c in CSV_REQUIRED if c not in table.columns]
    reserved = [c for c in table.columns if c in (*CSV_RESERVED, LINE)]
    if missing or reserved:
        raise DataError(
            f"{path}: expected columns {list(CSV_REQUIRED)} plus optional {list(CSV_OPTIONAL)} and any extra "
            f"columns; missing {missing}, not allowed {reserved} (derived by medsg: rename or drop them)."
        )
    if table.empty:
        raise DataError(f"{path}: the CSV has a header but no rows; list one image per line.")
    table[LINE] = [line for line, _ in records]
    empty = (table["label"] == "") | (table["path"] == "")
    if empty.any():
        lines = table.loc[empty, LINE].tolist()[:5]
        raise DataError(
            f"{path}: empty 'path' or 'label' cell on line(s) {lines}; fill them or drop the rows."
        )
    return path, table


def _check_unique_ids(path: Path, ids: list[str], lines: list[int]) -> None:
    """Raise DataError naming the lines of every repeated id (the manifest needs one row per id)."""
    first: dict[str, int] = {}
    repeats = []
    for image_id, line in zip(ids, lines, strict=True):
        if image_id in first:
            repeats.append(f"line {line} repeats {image_id!r} of line {first[image_id]}")
        else:
            first[image_id] = line
    if repeats:
        raise DataError(
            f"{path}: ids must be unique (the 'id' column, or 'path' where it is empty): "
            f"{'; '.join(repeats[:5])}{' ...' if len(repeats) > 5 else ''}. Give each row its own id, or drop "
            "the repeated rows."
        )


def _resolver(base: Path, climbing: list[str]):
    """A function: a CSV path cell -> absolute path str; relative cells that leave ``base`` go to ``climbing``."""

    def resolve(cell: str, line: int) -> str:
        q = Path(cell).expanduser()
        if not q.is_absolute() and os.sep == "/" and "\\" in cell and not (base / q).exists():
            q = Path(cell.replace("\\", "/"))  # a Windows-style relative path
        if q.is_absolute():
            return str(q)
        if os.path.normpath(q).split(os.sep)[0] == "..":
            climbing.append(f"line {line}: {cell!r}")
        return str((base / q).resolve())

    return resolve


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
    """Manifest from a CSV listing (``root`` is the CSV file); see the module docstring for its rules."""
    path, table = _read_csv(root)
    base = path.parent
    classes = _sorted_labels(table["label"])
    climbing: list[str] = []
    resolve = _resolver(base, climbing)
    extras = [c for c in table.columns if c not in (*CSV_REQUIRED, *CSV_OPTIONAL, LINE)]
    rows = []
    for _, row in table.iterrows():
        line = int(row[LINE])
        masks = [resolve(m.strip(), line) for m in row.get("mask", "").split(MASK_SEP) if m.strip()]
        rows.append(
            {
                "id": row["id"] if row.get("id") else row["path"],
                "path": resolve(row["path"], line),
                "label": classes.index(row["label"]),
                "label_name": row["label"],
                "group": row.get("group") or None,
                "mask_paths": masks,
            }
            | {c: row[c] for c in extras}
        )
    _check_unique_ids(path, [r["id"] for r in rows], table[LINE].tolist())
    if climbing:
        log.warning(
            "%s: %d relative path(s) climb out of the CSV's folder %s: %s%s. They are used as written; check "
            "they point at the right files, or write them as absolute paths.",
            path,
            len(climbing),
            base,
            "; ".join(climbing[:5]),
            " ..." if len(climbing) > 5 else "",
        )
    return make_manifest(rows)


def image_files_below(folder: Path) -> list[Path]:
    """The images under ``folder``, at any depth, by the imagefolder adapter's rules (its suffixes, and DICOM
    by content whatever the name), naturally sorted. Lesion masks laid out like BUSI's (``<scan>_mask.png``
    beside ``<scan>.png``) are left out, so a dataset folder with its masks predicts only the scans; what is left out is
    counted in the log. Hidden files and folders are skipped, and symlinked folders are not followed. What
    ``medsg predict`` and ``medsg pretrain --folder`` read from a folder."""
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)
    ]
    images = [p for p in files if is_image_file(p, IMAGE_SUFFIXES)]
    masks = lesion_masks(images)
    if masks:
        log.warning(
            "%s: %d lesion-mask file(s) beside their scans (<scan>_mask*) left out, e.g. %s; name one on its own "
            "to read it",
            folder,
            len(masks),
            min(masks).name,
        )
    if len(files) > len(images):
        log.info("%s: %d file(s) that are not images left out", folder, len(files) - len(images))
    return sorted(set(images) - set(masks), key=lambda p: natural_key(p.as_posix()))
