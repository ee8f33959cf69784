"""Grouped, stratified k-fold splits that are written once and reused, nnU-Net style.

A split file ``data_splits/<dataset>_<k>fold_seed<s>.json`` holds a header (dataset, k, seed, grouping,
grouping_description, image and group counts, audit hash, method) and ``folds``: a list of
``{"train": [ids], "val": [ids]}``. Following nnU-Net's naming, ``"val"`` is the **held-out test fold** of that
split: every id is in exactly one ``val`` list, and out-of-fold predictions over all ``val`` lists cover the
dataset once. Model selection uses ``inner_split`` inside ``train``, never ``val``.

``grouping`` is the grouping key, as ``splits.grouping`` in the config means it: the manifest column the folds
were grouped by (``"group"``, a CSV column such as ``"patient_id"``, or ``"dicom:PatientID"``).
``grouping_description`` says in words what a group is (``medsg.data.audit.describe_grouping``); the runner
and ``medsg.data.canonical`` pass it to ``load_or_create_splits`` / ``make_header``, so the header is written
once, complete. Files written before this held the words in ``grouping`` itself; ``header_grouping`` still
reads them (a ``grouping`` that is not a plain column-like name is such a legacy description, the key then
unknown), and their folds are used unchanged.

Folds come from ``StratifiedGroupKFold(shuffle=True, random_state=seed)`` over the rows sorted by id, so the
manifest's row order does not matter. Groups (ISIC lesions, BUSI duplicate clusters) never span folds.

A split grouped by a DICOM header id (``splits.grouping: dicom:PatientID``) also holds ``group_salt`` in its
header: the salt of the hashes that stand in for the ids (``medsg.data.dicom.salted_hash``). Every later run on
the same data reads it back (``read_group_salt``), so the same patient always makes the same group. Other
splits have no salt, so the committed split files are unchanged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from medsg.core import __version__
from medsg.core.errors import DataError
from medsg.core.io import atomic_write_text

log = logging.getLogger(__name__)

METHOD = "StratifiedGroupKFold(shuffle=True)"
Folds = list[dict[str, list[str]]]
# a grouping key: one token of letters, digits, "_", ".", "-" and ":" ("group", "patient_id", "dicom:PatientID")
_GROUPING_KEY = re.compile(r"[\w.:-]+")


def is_grouping_key(value: Any) -> bool:
    """True for a plain column-like name (``"group"``, ``"patient_id"``, ``"dicom:PatientID"``), False for words
    such as the legacy ``"lesion_id from HAM10000_metadata.csv ..."``."""
    return isinstance(value, str) and _GROUPING_KEY.fullmatch(value) is not None


def header_grouping(header: dict[str, Any]) -> tuple[str | None, str | None]:
    """(grouping key, grouping description) of a split header, either None where the header does not say.

    A header with ``grouping_description`` is current: its ``grouping`` is the key. In an older header without
    it, a ``grouping`` that is not a plain column-like name (``is_grouping_key``) is the description, and the
    key is unknown.
    """
    grouping = header.get("grouping")
    description = header.get("grouping_description")
    if isinstance(description, str) and description.strip():
        return (grouping if isinstance(grouping, str) and grouping else None), description.strip()
    if is_grouping_key(grouping):
        return grouping, None
    if isinstance(grouping, str) and grouping.strip():
        return None, grouping.strip()  # legacy: the words were stored as the grouping
    return None, None


def split_filename(dataset: str, k: int, seed: int) -> str:
    """``<dataset>_<k>fold_seed<s>.json``."""
    return f"{dataset}_{k}fold_seed{seed}.json"


def _sorted_by_id(manifest: pd.DataFrame, group_col: str) -> pd.DataFrame:
    """Rows sorted by id (so folds do not depend on row order), after checking the needed columns."""
    for col in ("id", "label", group_col):
        if col not in manifest.columns:
            raise DataError(f"manifest has no column {col!r} (columns: {list(manifest.columns)}).")
    return manifest.sort_values("id", kind="stable").reset_index(drop=True)


def make_kfold_splits(manifest: pd.DataFrame, k: int, seed: int, group_col: str = "group") -> Folds:
    """Stratified (by ``label``), grouped (by ``group_col``) k-fold split of ``manifest['id']``."""
    df = _sorted_by_id(manifest, group_col)
    n_groups = df[group_col].nunique()
    if k < 2 or n_groups < k:
        raise DataError(
            f"Cannot make {k} folds from {len(df)} images in {n_groups} groups; need k >= 2 and >= k groups."
        )
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    ids = df["id"].to_numpy()
    try:
        parts = list(cv.split(np.zeros(len(df)), df["label"].to_numpy(), df[group_col].to_numpy()))
    except ValueError as exc:
        raise DataError(f"Cannot make {k} stratified folds from {len(df)} images: {exc}") from exc
    return [{"train": sorted(ids[tr].tolist()), "val": sorted(ids[te].tolist())} for tr, te in parts]


def check_trainable_classes(manifest: pd.DataFrame, group_col: str = "group") -> None:
    """Refuse, before any split file is made, data that cross-validation cannot learn: labels that differ only
    in case (a typo that would make a class of its own), fewer than two classes, or a class whose images form
    a single group (the fold that tests it would train without it)."""
    names = sorted(manifest["label_name"].astype(str).unique())
    folded: dict[str, list[str]] = {}
    for name in names:
        folded.setdefault(name.casefold(), []).append(name)
    twins = [group for group in folded.values() if len(group) > 1]
    if twins:
        raise DataError(
            f"label(s) {twins} differ only in upper/lower case, so they would be separate classes; write each "
            "class one way in the CSV or folder names"
        )
    if len(names) < 2:
        raise DataError(
            f"the data has {len(names)} class(es) {names}; a classifier needs at least 2: add the images of the "
            "other classes (a folder or label each)"
        )
    groups = manifest.groupby("label_name")[group_col].nunique()
    single = {str(name): int((manifest["label_name"] == name).sum()) for name in groups[groups < 2].index}
    if single:
        listed = ", ".join(f"{name!r} ({n} image(s), one {group_col})" for name, n in single.items())
        raise DataError(
            f"class(es) {listed}: the fold that tests such a class would train without it. Add images of it "
            "from at least two groups (a few per fold to learn anything), or leave the class out"
        )


def check_folds_train_every_class(manifest: pd.DataFrame, splits: Folds) -> None:
    """Raise DataError naming the fold and class when a fold's training part lacks a class of the data."""
    label_of = dict(zip(manifest["id"], manifest["label_name"].astype(str), strict=True))
    names = set(label_of.values())
    for f, fold in enumerate(splits):
        missing = sorted(names - {label_of[i] for i in fold["train"]})
        if missing:
            raise DataError(
                f"fold {f}: its training part has no image of {missing}, so it cannot learn what it is tested "
                "on. Add images of those classes from more groups, or lower splits.k"
            )


def check_no_leakage(manifest: pd.DataFrame, splits: Folds, group_col: str = "group") -> dict[str, int]:
    """Raise DataError unless every id is in exactly one test fold, train/val partition the ids of each
    fold, and no group has members in two test folds. Returns counts for logging."""
    ids = set(manifest["id"])
    seen: dict[str, int] = {}
    for f, fold in enumerate(splits):
        train, val = set(fold["train"]), set(fold["val"])
        if train & val:
            raise DataError(f"fold {f}: ids in both train and val, e.g. {sorted(train & val)[:5]}.")
        if train | val != ids:
            diff = sorted((train | val) ^ ids)
            raise DataError(f"fold {f}: train+val do not equal the manifest ids; differing e.g. {diff[:5]}.")
        for i in val:
            if i in seen:
                raise DataError(f"id {i!r} is in the test folds {seen[i]} and {f}.")
            seen[i] = f
    if set(seen) != ids:
        raise DataError(f"ids in no test fold, e.g. {sorted(ids - set(seen))[:5]}.")
    folds_of = manifest.assign(_fold=manifest["id"].map(seen)).groupby(group_col)["_fold"].nunique()
    leaking = folds_of[folds_of > 1]
    if len(leaking):
        raise DataError(
            f"{len(leaking)} group(s) span several folds (leakage), e.g. {leaking.index[:5].tolist()}. "
            "Regenerate the split file for this grouping."
        )
    return {"n_folds": len(splits), "n_ids": len(ids), "n_groups": int(manifest[group_col].nunique())}


def restrict_splits(splits: Folds, keep_ids: Iterable[str]) -> Folds:
    """The same folds with only ``keep_ids`` (order kept)."""
    keep = set(keep_ids)
    return [{key: [i for i in fold[key] if i in keep] for key in ("train", "val")} for fold in splits]


def save_splits(path: str | Path, header: dict[str, Any], splits: Folds) -> Path:
    """Write ``{"header", "folds"}`` as JSON, atomically."""
    return atomic_write_text(path, json.dumps({"header": header, "folds": splits}, indent=1) + "\n")


def read_splits(path: str | Path) -> tuple[dict[str, Any], Folds]:
    """Read a split file -> (header, folds); malformed files raise DataError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        header, folds = data["header"], data["folds"]
        if not all(set(f) >= {"train", "val"} for f in folds):
            raise KeyError("train/val")
    except FileNotFoundError as exc:
        raise DataError(f"Split file not found: {path}.") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a medsg split file ({exc}); delete it to regenerate.") from exc
    return header, folds


def make_header(
    manifest: pd.DataFrame,
    dataset: str,
    k: int,
    seed: int,
    grouping: str,
    audit_hash: str,
    group_col: str = "group",
    grouping_description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The header recorded with a split file.

    ``grouping`` is the grouping key (the column the folds are grouped by, as ``splits.grouping`` names it),
    ``grouping_description`` says in words what a group is, and ``extra`` adds fields (``group_salt`` for a
    DICOM-header grouping). Words passed as ``grouping`` without a description are refused: the file would read
    back as a legacy header whose key is unknown.
    """
    if not grouping_description and not is_grouping_key(grouping):
        raise DataError(
            f"split header: grouping {grouping!r} is not a column name; pass the grouping column as grouping "
            "and the words as grouping_description."
        )
    described = {"grouping_description": grouping_description} if grouping_description else {}
    return {
        "dataset": dataset,
        "k": k,
        "seed": seed,
        "grouping": grouping,
        **described,
        "n_images": len(manifest),
        "n_groups": int(manifest[group_col].nunique()),
        "audit_hash": audit_hash,
        "created_by": f"medsg {__version__}",
        "method": METHOD,
        "val_means": "held-out test fold (nnU-Net naming)",
        **(extra or {}),
    }


def read_group_salt(path: str | Path) -> str | None:
    """The ``group_salt`` of an existing split file (None when the file or the field is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    header, _ = read_splits(path)
    salt = header.get("group_salt")
    return str(salt) if salt else None


def load_or_create_splits(
    manifest: pd.DataFrame,
    path: str | Path,
    k: int,
    seed: int,
    dataset: str,
    grouping: str,
    audit_hash: str,
    group_col: str = "group",
    allow_subset: bool = False,
    excluded_ids: Iterable[str] = (),
    grouping_description: str | None = None,
    header_extra: dict[str, Any] | None = None,
) -> Folds:
    """Reuse the split file at ``path`` if it exists, else create and write it (``header_extra`` added to
    its header). A reused file must hold the same ``group_salt`` as ``header_extra`` when that has one.

    A reused file must list exactly the manifest's ids. Two documented exceptions, both logged:
    ``excluded_ids`` (ids the audit policy dropped, e.g. BUSI's cross-class conflict) and, with
    ``allow_subset=True``, any ids absent from the manifest (a canonical split over all 10015 ISIC images used
    with a local subset). Folds are then restricted to the manifest ids: groups stay in their folds, so the
    restricted split is still leak-free, only less balanced. Ids in the manifest but not in the file are
    always an error: silently re-splitting would make results incomparable.
    """
    path = Path(path)
    if not path.exists():
        splits = make_kfold_splits(manifest, k, seed, group_col)
        check_no_leakage(manifest, splits, group_col)
        header = make_header(
            manifest, dataset, k, seed, grouping, audit_hash, group_col, grouping_description, header_extra
        )
        save_splits(path, header, splits)
        log.info("Wrote new split file %s (%d folds, %d images)", path, k, len(manifest))
        return splits
    header, splits = read_splits(path)
    if header.get("k") != k or len(splits) != k:
        raise DataError(f"{path}: holds {len(splits)} folds (header k={header.get('k')}), expected {k}.")
    for key, want, setting in (("dataset", dataset, "data.adapter"), ("seed", seed, "splits.seed")):
        if header.get(key) not in (None, want):  # the report would name a protocol the folds do not follow
            raise DataError(
                f"{path}: made for {key} {header.get(key)!r}, but {setting} is {want!r}. Set {setting} to "
                f"{header.get(key)!r} to reuse these folds, or point splits.file at a new path to make new ones."
            )
    file_key, file_words = header_grouping(header)
    salt = (header_extra or {}).get("group_salt")
    if salt and header.get("group_salt") != salt:
        raise DataError(
            f"{path}: made for grouping {file_key or file_words!r} without this data's group_salt, so its "
            f"groups cannot be checked for grouping {grouping!r}. Delete it (or set splits.file to a new path) "
            "to make a split grouped by the DICOM header."
        )
    if file_key is not None and file_key != grouping:
        log.warning(
            "%s: folds made grouped by %r, used with grouping %r; they are checked for leakage by %r",
            path,
            file_key,
            grouping,
            group_col,
        )
    file_ids = {i for fold in splits for i in fold["val"]}
    ids = set(manifest["id"])
    extra = sorted(ids - file_ids)
    if extra:
        raise DataError(
            f"{path}: {len(extra)} manifest id(s) are not in the split file, e.g. {extra[:5]}. Delete the file to "
            "regenerate it for this data, or fix the data so it matches the file."
        )
    missing = file_ids - ids
    excused = missing & set(excluded_ids)
    unexcused = sorted(missing - excused)
    if unexcused and not allow_subset:
        raise DataError(
            f"{path}: {len(unexcused)} id(s) of the split file are missing from the data, e.g. {unexcused[:5]}. "
            "Restore the images, delete the file to regenerate it, or pass allow_subset=True to use the "
            "canonical split restricted to the images present."
        )
    if missing:
        log.warning(
            "%s: restricting folds to the %d manifest ids (%d excluded by the audit policy, %d absent)",
            path,
            len(ids),
            len(excused),
            len(unexcused),
        )
        splits = restrict_splits(splits, ids)
    if header.get("audit_hash") not in (None, "", audit_hash):  # also when ids were excused or absent
        log.warning(
            "%s: the audit hash it was made with differs from this data's (%s vs %s): %s",
            path,
            header.get("audit_hash"),
            audit_hash,
            "changed content or labels under the same ids?"
            if not missing
            else "other images than it was made for (absent or excused ids), or changed content or labels",
        )
    check_no_leakage(manifest, splits, group_col)
    return splits


def inner_split(
    manifest_subset: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0, group_col: str = "group"
) -> tuple[list[str], list[str]]:
    """Grouped + stratified (train_ids, val_ids) inside a training fold, for model selection.

    Honours ``val_fraction`` itself, not ``1 / round(1 / val_fraction)`` as a first k-fold split would
    (0.4 and 0.7 would both give 50 %): sklearn has no stratified grouped holdout of a given size. Groups are
    taken in a seeded random order, largest first, and each goes to validation when that brings every
    class's validation count closer to ``val_fraction`` of the class. So each class lands within one group
    of its target, and a group is never split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    df = _sorted_by_id(manifest_subset, group_col)
    n_groups = df[group_col].nunique()
    if n_groups < 2:
        raise DataError(f"inner_split needs at least 2 groups, got {n_groups} ({len(df)} images).")
    counts = pd.crosstab(df[group_col], df["label"])  # groups x classes, sorted by group name
    per_group = counts.to_numpy()
    order = np.random.default_rng(seed).permutation(len(counts))
    sizes = per_group.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties in seeded order
    target = val_fraction * per_group.sum(axis=0)
    in_val = np.zeros(len(counts), dtype=bool)
    val_counts = np.zeros(counts.shape[1])
    for g in order:
        with_g = val_counts + per_group[g]
        if np.abs(with_g - target).sum() < np.abs(val_counts - target).sum():
            in_val[g], val_counts = True, with_g
    if not in_val.any():  # a fraction below half the smallest group: take one group rather than none
        in_val[order[-1]] = True
    if in_val.all():
        in_val[order[-1]] = False
    val_groups = set(counts.index[in_val])
    is_val = df[group_col].isin(val_groups).to_numpy()
    ids = df["id"].to_numpy()
    return sorted(ids[~is_val].tolist()), sorted(ids[is_val].tolist())
