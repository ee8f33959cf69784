"""ISIC 2018 Task 3 (HAM10000) in its downloaded layout.

``ISIC2018_Task3_<Subset>_Input/ISIC_*.jpg`` plus the one-hot ground truth
``ISIC2018_Task3_<Subset>_GroundTruth.csv`` (columns ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``, or HAM10000's
``image_id,dx`` with ``lesion_id``, as Harvard Dataverse ships the test labels), found either beside the input
folder or inside the official ``ISIC2018_Task3_<Subset>_GroundTruth/`` folder.
Several images show the same lesion, so ``group`` is HAM10000's ``lesion_id`` when ``HAM10000_metadata.csv``
is available (beside the inputs or given as ``metadata=``) or the ground truth has a ``lesion_id`` column;
without either each image is its own group and a warning says that folds may then leak lesions. The class order is the CSV header's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medsg.core.errors import DataError
from medsg.data.manifest import make_manifest

log = logging.getLogger(__name__)

ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
DX_TO_CLASS: dict[str, str] = {c.lower(): c for c in ISIC_CLASSES}  # HAM10000 ``dx`` -> Task 3 column
SUBSETS: dict[str, str] = {"training": "Training", "validation": "Validation", "test": "Test"}
METADATA_FILE = "HAM10000_metadata.csv"


def isic_class_names(root: str | Path | None = None) -> list[str]:
    """ISIC 2018 Task 3 class order, as in the ground-truth CSV header."""
    return list(ISIC_CLASSES)


def _find_groundtruth(root: Path, subset: str) -> Path:
    """The subset's one-hot CSV, beside the input folder or inside the official GroundTruth folder."""
    name = f"ISIC2018_Task3_{SUBSETS[subset]}_GroundTruth"
    for candidate in (root / f"{name}.csv", root / name / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"ISIC 2018 ground truth not found: expected {root / (name + '.csv')} or {root / name / (name + '.csv')}."
    )


def read_groundtruth(path: str | Path) -> pd.DataFrame:
    """Read a Task 3 one-hot CSV -> DataFrame(image, label, label_name); checks columns and one-hotness."""
    path = Path(path)
    try:  # blank lines kept, then dropped, so that index + 2 is each row's line in the file
        table = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the ground-truth CSV ({exc}).") from exc
    table = table.dropna(how="all")
    columns = [str(c).strip() for c in table.columns]
    if {"image_id", "dx"} <= set(columns):  # HAM10000's layout, as Harvard Dataverse ships the test labels
        return _groundtruth_from_dx(table.set_axis(columns, axis=1), path)
    expected = ["image", *ISIC_CLASSES]
    if columns != expected:
        raise DataError(
            f"{path}: expected columns {expected} (the challenge's one-hot layout) or HAM10000's "
            f"(image_id, dx, and optionally lesion_id), found {list(table.columns)}."
        )
    table.columns = expected
    lines = (table.index + 2).tolist()
    values = table[list(ISIC_CLASSES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1.0))
    if bad.any():
        bad_lines, bad_images = np.array(lines)[bad], table["image"][bad]
        rows = [f"line {line} ({image})" for line, image in zip(bad_lines, bad_images, strict=True)]
        raise DataError(
            f"{path}: {int(bad.sum())} row(s) are not one-hot (exactly one 1.0, the rest 0.0): "
            f"{', '.join(rows[:5])}{' ...' if len(rows) > 5 else ''}. Fix those rows."
        )
    _check_unique_images(path, lines, table["image"].tolist())
    label = values.argmax(axis=1)
    return pd.DataFrame(
        {"image": table["image"], "label": label, "label_name": [ISIC_CLASSES[i] for i in label]}
    )


def _read_metadata(path: str | Path, needed: set[str]) -> pd.DataFrame:
    """``HAM10000_metadata.csv`` as str cells, checked to hold the ``needed`` columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HAM10000 metadata not found: {path}. Pass the path of HAM10000_metadata.csv.")
    try:
        meta = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the HAM10000 metadata CSV ({exc}).") from exc
    if not needed <= set(meta.columns):
        raise DataError(f"{path}: expected columns {sorted(needed)}, found {list(meta.columns)}.")
    return meta


SUBGROUP_COLUMNS = ("age", "sex", "localization")  # HAM10000 columns carried into the manifest for subgroups


def read_image_metadata(path: str | Path) -> dict[str, dict[str, str]]:
    """image id -> {lesion_id, and the subgroup columns the file has (age, sex, localization)}."""
    meta = _read_metadata(path, {"lesion_id", "image_id"})
    keep = ["lesion_id", *[c for c in SUBGROUP_COLUMNS if c in meta.columns]]
    cells = meta[keep].fillna("")
    return dict(zip(meta["image_id"], cells.to_dict("records"), strict=True))


def _check_unique_images(path: Path, lines: list[int], images: list[str]) -> None:
    """Raise DataError naming each row (by its line in the file) that repeats an earlier row's image."""
    first: dict[str, int] = {}
    repeats = []
    for line, image in zip(lines, images, strict=True):
        if image in first:
            repeats.append(f"line {line} repeats {image} of line {first[image]}")
        first.setdefault(image, line)
    if repeats:
        raise DataError(f"{path}: repeated image ids: {'; '.join(repeats[:5])}. Keep one row per image.")


def _groundtruth_from_dx(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``read_groundtruth``'s frame from HAM10000-style rows (``image_id``, ``dx``; ``lesion_id`` kept as
    ``group`` when present, so an external test's bootstrap resamples lesions)."""
    dx = table["dx"].fillna("").str.strip().str.lower()
    unknown = sorted(set(dx) - set(DX_TO_CLASS))
    if unknown:
        raise DataError(
            f"{path}: unknown dx value(s) {unknown}; expected {sorted(DX_TO_CLASS)}. Fix those rows."
        )
    table = table.assign(image_id=table["image_id"].fillna("").str.strip())
    _check_unique_images(path, (table.index + 2).tolist(), table["image_id"].tolist())
    names = [DX_TO_CLASS[d] for d in dx]
    frame = pd.DataFrame(
        {
            "image": table["image_id"].to_numpy(),
            "label": [ISIC_CLASSES.index(n) for n in names],
            "label_name": names,
        }
    )
    if "lesion_id" in table.columns:
        frame["group"] = table["lesion_id"].fillna("").str.strip().to_numpy()
    return frame


def load_isic2018(
    root: str | Path, subset: str = "training", metadata: str | Path | None = None
) -> pd.DataFrame:
    """Manifest of one ISIC 2018 Task 3 subset (ids are the ``ISIC_*`` image ids)."""
    if subset not in SUBSETS:
        raise DataError(f"Unknown ISIC 2018 subset {subset!r}; expected one of {list(SUBSETS)}.")
    root = Path(root).expanduser().resolve()
    inputs = root / f"ISIC2018_Task3_{SUBSETS[subset]}_Input"
    if not inputs.is_dir():
        others = [
            k for k, v in SUBSETS.items() if k != subset and (root / f"ISIC2018_Task3_{v}_Input").is_dir()
        ]
        hint = (
            f" The folder holds the {' and '.join(others)} subset: pass "
            + " or ".join(f"--option subset={k}" for k in others)
            + " (evaluate), or data.options.subset in a config."
            if others
            else ""
        )
        raise DataError(f"ISIC 2018 image folder not found: {inputs}.{hint}")
    truth = read_groundtruth(_find_groundtruth(root, subset))
    files = {p.stem: p for p in inputs.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    missing = [i for i in truth["image"] if i not in files]
    if missing:
        raise DataError(
            f"{inputs}: {len(missing)} image(s) listed in the ground truth are missing, e.g. {missing[:5]}. "
            "Restore them or remove their rows from the CSV."
        )
    extra = sorted(set(files) - set(truth["image"]))
    if extra:
        log.warning(
            "ISIC 2018: %d image(s) without a ground-truth row are ignored, e.g. %s", len(extra), extra[:3]
        )
    own_groups = "group" in truth.columns and bool(truth["group"].astype(bool).any())
    metadata_rows = _image_metadata(root, metadata, quiet=own_groups)
    groups = {image: row["lesion_id"] for image, row in metadata_rows.items() if row.get("lesion_id")}
    if "group" in truth.columns:  # the ground truth's own lesion ids, where the metadata has none
        groups = {
            image: group for image, group in zip(truth["image"], truth["group"], strict=True) if group
        } | groups
    truth = truth[["image", "label", "label_name"]]
    subgroup_keys = sorted({k for row in metadata_rows.values() for k in row} - {"lesion_id"})
    rows = []
    for image, label, name in truth.itertuples(index=False):
        extra = metadata_rows.get(image, {})
        rows.append(
            {
                "id": image,
                "path": str(files[image]),
                "label": label,
                "label_name": name,
                "group": groups.get(image, image),
            }
            | {key: extra.get(key, "") for key in subgroup_keys}
        )
    df = make_manifest(rows)
    if groups:
        ungrouped = int((~df["id"].isin(list(groups))).sum())
        if ungrouped:
            log.warning(
                "ISIC 2018: %d image(s) have no lesion_id (metadata or ground truth); each is its own group.",
                ungrouped,
            )
    return df


def _image_metadata(
    root: Path, metadata: str | Path | None, quiet: bool = False
) -> dict[str, dict[str, str]]:
    """``read_image_metadata`` of ``metadata`` or ``root/HAM10000_metadata.csv``; {} without either (warned,
    unless ``quiet``: the ground truth brought its own lesion ids)."""
    if metadata is not None:
        return read_image_metadata(metadata)
    if (root / METADATA_FILE).is_file():
        return read_image_metadata(root / METADATA_FILE)
    if quiet:
        return {}
    log.warning(
        "ISIC 2018: %s not found in %s; each image is its own group, so images of one lesion may land in "
        "different folds of a new split file and on both sides of every fold's inner train/validation split "
        "(selection and calibration then see the lesion twice; a committed split file still keeps the outer "
        "folds grouped), and are resampled apart (evaluate's CIs, then too narrow).",
        METADATA_FILE,
        root,
    )
    return {}


def metadata_manifest(metadata_csv: str | Path) -> pd.DataFrame:
    """A path-less manifest of all HAM10000 images from the metadata alone (dx mapped to Task 3 classes).

    Used to build the canonical ISIC split over all 10015 training ids without needing the images.
    """
    path = Path(metadata_csv)
    meta = _read_metadata(path, {"lesion_id", "image_id", "dx"})
    unknown = sorted(set(meta["dx"]) - set(DX_TO_CLASS))
    if unknown:
        raise DataError(f"{path}: unknown dx value(s) {unknown}; expected {sorted(DX_TO_CLASS)}.")
    names = [DX_TO_CLASS[d] for d in meta["dx"]]
    rows = [
        {"id": i, "path": "", "label": ISIC_CLASSES.index(n), "label_name": n, "group": g}
        for i, n, g in zip(meta["image_id"], names, meta["lesion_id"], strict=True)
    ]
    return make_manifest(rows).sort_values("id", kind="stable").reset_index(drop=True)
