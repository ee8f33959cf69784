"""The manifest: one table row per image, the only thing adapters hand to audit, splits and pipelines.

Every dataset is reduced to the same six columns so the rest of medsg never needs to know a folder layout:
``id`` (unique str), ``path`` (absolute image path), ``label`` (int index into the class list), ``label_name``,
``group`` (lesion id / duplicate cluster / the image id when nothing better is known) and ``mask_paths``
(mask files joined by ``;``, empty when none).

Extra columns (e.g. a ``patient_id`` from a CSV listing, usable as ``splits.grouping``) may follow the six;
they are kept as strings by ``make_manifest``, the audit policy, ``save_manifest`` and ``read_manifest``.
"""

from __future__ import annotations

import importlib
import inspect
import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medsg.core.errors import DataError
from medsg.core.io import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("id", "path", "label", "label_name", "group", "mask_paths")
MASK_SEP = ";"

# adapter name -> (module, loader function, class-name function); imported lazily so an adapter's
# optional dependencies never slow down the others.
_LOADER, _CLASS_NAMES = 1, 2
_ADAPTERS: dict[str, tuple[str, str, str]] = {
    "busi": ("medsg.data.busi", "load_busi", "busi_class_names"),
    "kvasir": ("medsg.data.kvasir", "load_kvasir", "kvasir_class_names"),
    "isic2018": ("medsg.data.isic2018", "load_isic2018", "isic_class_names"),
    "imagefolder": ("medsg.data.generic", "load_imagefolder", "imagefolder_class_names"),
    "csv": ("medsg.data.generic", "load_csv", "csv_class_names"),
}


def adapter_names() -> list[str]:
    """The adapter names ``load_manifest`` accepts."""
    return sorted(_ADAPTERS)


def _adapter(name: str, which: int) -> Any:
    """The adapter's function ``which`` (``_LOADER`` or ``_CLASS_NAMES``), importing its module now."""
    if name not in _ADAPTERS:
        raise DataError(f"Unknown dataset adapter {name!r}; expected one of {adapter_names()}.")
    module = importlib.import_module(_ADAPTERS[name][0])
    return getattr(module, _ADAPTERS[name][which])


def _option_names(function: Any) -> list[str]:
    """The keyword options an adapter's function takes: its parameters after the dataset root."""
    return list(inspect.signature(function).parameters)[1:]


def load_manifest(adapter: str, root: str | Path, **options: Any) -> pd.DataFrame:
    """Read a dataset in its downloaded layout and return its manifest (see module docstring).

    ``options`` (``data.options``, ``--option KEY=VALUE``) must be keyword parameters of the adapter's loader;
    a mistyped key is refused by name with the ones it takes, before anything is read."""
    loader = _adapter(adapter, _LOADER)
    accepted = _option_names(loader)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"adapter {adapter!r} has no option(s) {unknown} (data.options / --option); it takes "
            + (", ".join(accepted) if accepted else "none")
        )
    return loader(root, **options)


def class_names(adapter: str, root: str | Path | None = None, **options: Any) -> list[str]:
    """The fixed class order of a dataset; ``root`` is needed only for imagefolder/csv datasets. ``options``
    (``data.options``) reach the adapter's class-name function where it takes them (imagefolder's
    ``classes`` fixes the order), so the names follow the labels ``load_manifest`` gives."""
    names = _adapter(adapter, _CLASS_NAMES)
    accepted = _option_names(names)
    return list(names(root, **{k: v for k, v in options.items() if k in accepted}))


def make_manifest(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a validated manifest from dict rows (missing ``group`` -> id, missing ``mask_paths`` -> "").

    Keys other than the six columns become extra str columns after them (missing cells -> ""), so a
    user-given grouping such as ``patient_id`` travels with the manifest.
    """
    records, extras = [], []
    for row in rows:
        for key in row:
            if key not in COLUMNS and key not in extras:
                extras.append(key)
        masks = row.get("mask_paths", "")
        if not isinstance(masks, str):
            masks = MASK_SEP.join(str(m) for m in masks)
        records.append(
            {
                "id": str(row["id"]),
                "path": str(row["path"]),
                "label": int(row["label"]),
                "label_name": str(row["label_name"]),
                "group": str(row.get("group") or row["id"]),
                "mask_paths": masks,
            }
            | {key: "" if row.get(key) is None else str(row[key]) for key in extras}
        )
    for record in records:  # rows seen before an extra key appeared
        for key in extras:
            record.setdefault(key, "")
    df = pd.DataFrame.from_records(records, columns=[*COLUMNS, *extras])
    validate_manifest(df)
    return df.reset_index(drop=True)


def validate_manifest(df: pd.DataFrame, source: str = "manifest") -> None:
    """Raise DataError if columns, dtypes or id uniqueness are wrong; ``source`` names the file in the message."""
    if list(df.columns[: len(COLUMNS)]) != list(COLUMNS):
        raise DataError(f"{source}: expected columns {list(COLUMNS)}, found {list(df.columns)}.")
    dup = df["id"][df["id"].duplicated()].tolist()
    if dup:
        paths = df.loc[df["id"] == dup[0], "path"].tolist()
        raise DataError(
            f"{source}: ids must be unique; repeated: {dup[:5]} ({dup[0]!r} is {paths[:3]}). Rename the files, "
            "or, for class folders that reuse file names, use the imagefolder adapter (its ids keep the folder)."
        )
    if df["label"].isna().any():
        raise DataError(f"{source}: column 'label' has empty values.")


def mask_list(value: Any) -> list[str]:
    """Split a manifest ``mask_paths`` cell into a list of paths (empty cell -> [])."""
    if not isinstance(value, str) or not value:
        return []
    return [p for p in value.split(MASK_SEP) if p]


def save_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV (the six columns, then any extra ones), atomically."""
    validate_manifest(df, str(path))
    buffer = io.StringIO()
    df.to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV written by ``save_manifest`` (all columns, extra ones too, as str except ``label``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Manifest file not found: {path}. Create it with save_manifest or `medsg audit`.")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    validate_manifest(df, str(path))
    try:
        df["label"] = df["label"].astype(int)
    except ValueError as exc:
        raise DataError(f"{path}: column 'label' must hold integers ({exc}).") from exc
    return df


def natural_key(text: str) -> list[object]:
    """Sort key that puts ``benign (2)`` before ``benign (10)``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def list_image_files(folder: Path, suffixes: Sequence[str], dataset: str) -> list[Path]:
    """Files of ``folder`` with an image suffix, naturally sorted by name.

    Hidden files are skipped (macOS copies leave ``._name.jpg`` resource forks that look like images);
    other files are skipped with a warning, so a stray README or archive is seen but never read as an image.
    When ``.dcm`` is accepted, so is any other file that is DICOM by content (PACS exports name files
    ``IM0001`` or by their UID, ``1.2.840....123``); a ``DICOMDIR`` is an index of such files, not an image,
    and is skipped with a warning.
    """
    files = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir():
            log.warning(
                "%s: ignoring the sub-folder %s (images must sit directly in %s)", dataset, path, folder
            )
            continue
        if not path.is_file():
            continue
        if path.name.upper() == "DICOMDIR":
            log.warning("%s: ignoring %s (a DICOMDIR indexes DICOM files; it holds no image)", dataset, path)
            continue
        if not is_image_file(path, suffixes):
            log.warning("%s: ignoring %s (not one of %s)", dataset, path, list(suffixes))
            continue
        files.append(path)
    return sorted(files, key=lambda p: natural_key(p.name))


def is_image_file(path: Path, suffixes: Sequence[str]) -> bool:
    """Whether a visible file is an image by ``suffixes``, or DICOM by content when ``.dcm`` is among them
    (PACS exports name files ``IM0001`` or by their UID); a ``DICOMDIR`` index is not an image."""
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    return path.suffix.lower() in suffixes or (".dcm" in suffixes and _is_dicom_content(path))


def _is_dicom_content(path: Path) -> bool:
    """Whether a file is DICOM by content (``DICM`` at byte 128), whatever its name."""
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")  # BUSI's lesion masks: x_mask.png, x_mask_1.png


def lesion_masks(files: Iterable[Path]) -> set[Path]:
    """The files laid out as BUSI's lesion masks: ``<stem>_mask.png`` or ``<stem>_mask_1.png`` beside a scan
    ``<stem>.*`` in the same folder. Named alike without such a scan (``with_mask_12.png`` in a face-mask
    dataset) is an ordinary image."""
    files = list(files)
    scans = {(p.parent, p.stem) for p in files}
    return {p for p in files if (m := MASK_RE.match(p.stem)) and (p.parent, m["stem"]) in scans}


def class_folder_rows(
    base: Path, classes: Sequence[str], suffixes: Sequence[str], dataset: str, id_with_suffix: bool
) -> list[dict[str, Any]]:
    """Manifest rows of ``base/<class>/<image>``: label = index in ``classes``, id ``<class>/<file>``.

    Ids keep the class folder so two folders may reuse a file name; ``id_with_suffix=False`` drops the
    suffix (Kvasir's published ids are the file stems).
    """
    rows = []
    for label, name in enumerate(classes):
        files = list_image_files(base / name, suffixes, dataset)
        masks = lesion_masks(files)
        if masks:  # a lesion mask read as a scan of its class: trivially learnable, and its scan's twin
            log.warning(
                "%s: %d file(s) in %s are lesion masks beside their scans (<scan>_mask*, e.g. %s) and are left "
                "out; for BUSI's layout use adapter busi, which reads them as masks",
                dataset,
                len(masks),
                base / name,
                min(masks).name,
            )
        files = [p for p in files if p not in masks]
        if not files:
            raise DataError(
                f"{dataset}: class folder {base / name} holds no images with suffix {list(suffixes)}."
            )
        for path in files:
            image_id = f"{name}/{path.name if id_with_suffix else path.stem}"
            rows.append({"id": image_id, "path": str(path), "label": label, "label_name": name})
    return rows


def sorted_class_dirs(root: Path, expected: Sequence[str] | None = None) -> list[str]:
    """Sub-folder names of ``root`` (hidden ones skipped), checked against ``expected`` when given."""
    if not root.is_dir():
        raise DataError(f"Dataset folder not found: {root}.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if expected is not None:
        unknown = sorted(set(found) - set(expected))
        missing = sorted(set(expected) - set(found))
        if unknown:
            raise DataError(
                f"{root}: unknown class folder(s) {unknown}; expected only {list(expected)}. "
                "Remove or rename them."
            )
        if missing:
            raise DataError(f"{root}: class folder(s) {missing} missing; expected {list(expected)}.")
    return found
