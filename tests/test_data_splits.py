"""Grouped stratified folds never leak a group, are reused verbatim, and refuse data that does not match."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsg.core.errors import DataError
from medsg.data import load_manifest
from medsg.data.audit import MIN_CORRELATION, NEAR_DUP_THRESHOLD, describe_grouping
from medsg.data.splits import (
    check_no_leakage,
    header_grouping,
    inner_split,
    is_grouping_key,
    load_or_create_splits,
    make_header,
    make_kfold_splits,
    read_splits,
    save_splits,
    split_filename,
)

REPO = Path(__file__).resolve().parents[1]


def toy(n_groups: int = 60, per_group: int = 3, n_classes: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = int(rng.integers(0, n_classes)) if g >= n_classes else g
        for j in range(per_group):
            rows.append(
                {
                    "id": f"img{g:03d}_{j}",
                    "path": "",
                    "label": label,
                    "label_name": str(label),
                    "group": f"G{g}",
                    "mask_paths": "",
                }
            )
    return pd.DataFrame(rows)


def test_folds_grouped_stratified_and_deterministic() -> None:
    df = toy()
    folds = make_kfold_splits(df, k=5, seed=0)
    info = check_no_leakage(df, folds)
    assert info == {"n_folds": 5, "n_ids": 180, "n_groups": 60}
    assert sorted(i for f in folds for i in f["val"]) == sorted(df["id"])
    assert make_kfold_splits(df.sample(frac=1, random_state=3), k=5, seed=0) == folds  # row order irrelevant
    assert make_kfold_splits(df, k=5, seed=1) != folds
    overall = df["label"].value_counts(normalize=True)
    for fold in folds:
        share = df[df["id"].isin(fold["val"])]["label"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.2


def test_check_no_leakage_catches_a_split_group() -> None:
    df = toy()
    folds = make_kfold_splits(df, k=3, seed=0)
    moved = "img000_0" if "img000_0" in folds[0]["val"] else None
    src = next(f for f in range(3) if "img000_0" in folds[f]["val"])
    dst = (src + 1) % 3
    bad = [dict(train=list(f["train"]), val=list(f["val"])) for f in folds]
    bad[src]["val"].remove("img000_0")
    bad[src]["train"].append("img000_0")
    bad[dst]["val"].append("img000_0")
    bad[dst]["train"].remove("img000_0")
    with pytest.raises(DataError, match="span several folds"):
        check_no_leakage(df, bad)
    del moved
    with pytest.raises(DataError, match="both train and val"):
        check_no_leakage(
            df, [{"train": folds[0]["train"] + ["img000_0"], "val": folds[0]["val"]}] + folds[1:]
        )


def test_too_few_groups() -> None:
    with pytest.raises(DataError, match="groups"):
        make_kfold_splits(toy(n_groups=3), k=5, seed=0)


def test_load_or_create_writes_then_reuses(tmp_path: Path) -> None:
    df = toy()
    path = tmp_path / split_filename("toy", 5, 0)
    folds = load_or_create_splits(df, path, 5, 0, "toy", "group", "abc")
    header, saved = read_splits(path)
    assert saved == folds
    assert header["dataset"] == "toy" and header["k"] == 5 and header["seed"] == 0
    assert header["audit_hash"] == "abc" and header["n_images"] == 180
    assert header["method"] == "StratifiedGroupKFold(shuffle=True)" and header["created_by"].startswith(
        "medsg "
    )
    # reuse: a hand-edited (still valid) file is returned as is, not recomputed
    edited = [folds[1], folds[0], *folds[2:]]
    path.write_text(json.dumps({"header": header, "folds": edited}))
    assert load_or_create_splits(df, path, 5, 0, "toy", "group", "abc") == edited


def test_header_grouping_is_the_key_and_the_words_are_a_description(tmp_path: Path) -> None:
    """``grouping`` is the column the folds were grouped by; what a group is goes in ``grouping_description``."""
    df = toy().assign(patient_id=lambda d: d["group"])
    path = tmp_path / "s.json"
    words = describe_grouping("csv", "patient_id")
    folds = load_or_create_splits(
        df, path, 5, 0, "csv", "patient_id", "h", group_col="patient_id", grouping_description=words
    )
    header, _ = read_splits(path)
    assert header["grouping"] == "patient_id" and header["grouping_description"] == words
    assert header_grouping(header) == ("patient_id", words)
    assert header["n_groups"] == 60
    # the words alone are refused as a grouping: the file would read back with its key unknown
    with pytest.raises(DataError, match="not a column name"):
        make_header(df, "csv", 5, 0, "patients merged with duplicates", "h")
    assert make_header(df, "csv", 5, 0, "group", "h")["grouping"] == "group"  # no description: key only
    for key in ("group", "patient_id", "dicom:PatientID", "site-2.b"):
        assert is_grouping_key(key) and header_grouping({"grouping": key}) == (key, None)
    for words_ in ("lesion_id from HAM10000_metadata.csv", "audit duplicate clusters (exact, ...)", "", None):
        assert not is_grouping_key(words_)
    assert header_grouping({}) == (None, None)

    # a legacy file (the words in ``grouping``, no description) is still read, its folds unchanged
    legacy_words = "lesion_id from HAM10000_metadata.csv merged with 2 audit near-duplicate cluster(s)"
    legacy = {k: v for k, v in header.items() if k != "grouping_description"} | {"grouping": legacy_words}
    assert header_grouping(legacy) == (None, legacy_words)
    save_splits(path, legacy, folds)
    assert read_splits(path) == (legacy, folds)
    reused = load_or_create_splits(
        df, path, 5, 0, "csv", "patient_id", "h", group_col="patient_id", grouping_description=words
    )
    assert reused == folds and read_splits(path)[0] == legacy  # reused as is, never rewritten


def test_reuse_rejects_mismatching_ids(tmp_path: Path) -> None:
    df = toy()
    path = tmp_path / "s.json"
    load_or_create_splits(df, path, 5, 0, "toy", "g", "h")
    extra = pd.concat([df, df.iloc[[0]].assign(id="new_image", group="Gnew")])
    with pytest.raises(DataError, match=r"new_image.*Delete the file"):
        load_or_create_splits(extra, path, 5, 0, "toy", "g", "h")
    fewer = df[~df["group"].isin(["G0"])]
    with pytest.raises(DataError, match=r"missing from the data.*img000_0"):
        load_or_create_splits(fewer, path, 5, 0, "toy", "g", "h")
    with pytest.raises(DataError, match="expected 3"):
        load_or_create_splits(df, path, 3, 0, "toy", "g", "h")
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a medsg split file"):
        load_or_create_splits(df, path, 5, 0, "toy", "g", "h")


def test_subset_and_excluded_ids(tmp_path: Path) -> None:
    df = toy()
    path = tmp_path / "s.json"
    full = load_or_create_splits(df, path, 5, 0, "toy", "g", "h")
    subset = df[df["id"].str.endswith("_0")]
    folds = load_or_create_splits(subset, path, 5, 0, "toy", "g", "h", allow_subset=True)
    for f_full, f_sub in zip(full, folds, strict=True):
        assert f_sub["val"] == [i for i in f_full["val"] if i.endswith("_0")]
    dropped = ["img005_0", "img005_1", "img005_2"]
    rest = df[~df["id"].isin(dropped)]
    folds = load_or_create_splits(rest, path, 5, 0, "toy", "g", "h", excluded_ids=dropped)
    assert sum(len(f["val"]) for f in folds) == 177
    with pytest.raises(DataError, match="missing"):
        load_or_create_splits(rest, path, 5, 0, "toy", "g", "h", excluded_ids=dropped[:1])


def test_inner_split_grouped_and_stratified() -> None:
    df = toy(n_groups=50)
    train, val = inner_split(df, val_fraction=0.2, seed=0)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(df["id"])
    groups = df.set_index("id")["group"]
    assert set(groups[train]).isdisjoint(set(groups[val]))
    assert 0.1 < len(val) / len(df) < 0.3
    assert set(df.set_index("id").loc[val, "label"]) == {0, 1, 2}
    assert inner_split(df, 0.2, 0) == (train, val)
    tiny = toy(n_groups=3, per_group=1)
    t, v = inner_split(tiny, val_fraction=0.2, seed=0)
    assert len(v) == 1 and len(t) == 2
    with pytest.raises(DataError, match="at least 2 groups"):
        inner_split(toy(n_groups=1), 0.2, 0)


@pytest.mark.parametrize("fraction", [0.15, 0.4, 0.7])
def test_inner_split_honours_the_fraction_within_one_group(fraction: float) -> None:
    # round(1 / f) folds gave 50 % for both 0.4 and 0.7; each class must now land within one group of f.
    df = toy(n_groups=80, per_group=3)
    train, val = inner_split(df, val_fraction=fraction, seed=1)
    labels = df.set_index("id")["label"]
    for label, n in labels.value_counts().items():
        n_val = int((labels[val] == label).sum())
        assert abs(n_val - fraction * n) <= 3, (label, n_val, fraction * n)
    assert abs(len(val) - fraction * len(df)) <= 3 * 3
    groups = df.set_index("id")["group"]
    assert set(groups[train]).isdisjoint(set(groups[val]))


def test_inner_split_seed_changes_the_split() -> None:
    df = toy(n_groups=80)
    assert inner_split(df, 0.2, 0) != inner_split(df, 0.2, 1)


def _canonical(name: str) -> tuple[dict, list]:
    return read_splits(REPO / "data_splits" / name)


@pytest.mark.parametrize("name", ["busi_5fold_seed0.json", "isic2018_5fold_seed0.json"])
def test_committed_split_file_structure(name: str) -> None:
    """Cheap check of the committed files themselves (no data needed): a valid k-fold partition."""
    header, folds = _canonical(name)
    assert {"dataset", "k", "seed", "grouping", "n_images", "n_groups", "audit_hash", "method"} <= set(header)
    # grouping: the column the folds were grouped by; the words are the runner's (describe_grouping)
    key, words = header_grouping(header)
    assert key == header["grouping"] == "group"
    described = describe_grouping(header["dataset"], "group", NEAR_DUP_THRESHOLD, MIN_CORRELATION)
    assert words == header["grouping_description"] and words.startswith(described)
    assert header["k"] == len(folds) == 5 and header["seed"] == 0
    assert name.startswith(header["dataset"])
    vals = [fold["val"] for fold in folds]
    ids = [i for val in vals for i in val]
    assert len(ids) == len(set(ids)) == header["n_images"]  # every id in exactly one val list
    all_ids = set(ids)
    for fold in folds:
        train, val = fold["train"], set(fold["val"])
        assert len(train) == len(set(train)) and not set(train) & val
        assert set(train) | val == all_ids
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 0.1 * len(ids) / len(folds)  # grouping keeps folds near equal


def test_split_by_a_csv_patient_column_after_the_audit(tmp_path: Path) -> None:
    from PIL import Image
    from synthetic import texture

    from medsg.data.audit import apply_audit_policy, audit_manifest

    rng = np.random.default_rng(0)
    lines = ["path,label,patient_id"]
    for i in range(24):
        Image.fromarray(texture(rng, (20, 20))).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{'ab'[i % 2]},P{i // 2:02d}")  # 12 patients, one image per class each
    (tmp_path / "dup.png").write_bytes((tmp_path / "0.png").read_bytes())
    lines.append("dup.png,a,P11")  # P00's image again, under patient P11
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    raw = load_manifest("csv", tmp_path / "list.csv")
    clean = apply_audit_policy(raw, audit_manifest(raw), group_col="patient_id")
    assert clean["patient_id"].nunique() == 11  # P00 and P11 merged through the duplicate
    folds = make_kfold_splits(clean, k=3, seed=0, group_col="patient_id")
    check_no_leakage(clean, folds, group_col="patient_id")
    fold_of = {i: f for f, fold in enumerate(folds) for i in fold["val"]}
    for _, ids in clean.groupby("patient_id")["id"]:
        assert len({fold_of[i] for i in ids}) == 1
    assert fold_of["0.png"] == fold_of["dup.png"] == fold_of["22.png"]


@pytest.mark.slow
def test_canonical_isic_file_matches_metadata(shared) -> None:
    meta = shared("data", "isic2018", "HAM10000_metadata.csv")
    from medsg.data.isic2018 import metadata_manifest

    header, folds = _canonical("isic2018_5fold_seed0.json")
    manifest = metadata_manifest(meta)
    assert header["n_images"] == len(manifest) == 10015
    check_no_leakage(manifest, folds)  # lesion_id groups never span folds
    local = load_manifest("isic2018", meta.parent)
    restricted = load_or_create_splits(
        local,
        REPO / "data_splits" / "isic2018_5fold_seed0.json",
        5,
        0,
        "isic2018",
        "group",
        "",
        allow_subset=True,
    )
    assert sum(len(f["val"]) for f in restricted) == 5984


@pytest.mark.slow
def test_canonical_busi_file_reproduces_and_has_no_leakage(shared) -> None:
    busi = shared("data", "busi")
    from medsg.data.audit import apply_audit_policy, audit_manifest
    from medsg.data.canonical import busi_canonical

    header, folds = _canonical("busi_5fold_seed0.json")
    new_header, new_folds = busi_canonical(busi)
    assert new_folds == folds and new_header["audit_hash"] == header["audit_hash"]
    assert _same_header(new_header, header)
    manifest = load_manifest("busi", busi)
    report = audit_manifest(manifest)
    clean = apply_audit_policy(manifest, report, conflicts="drop")
    dropped = sorted(set(manifest["id"]) - set(clean["id"]))
    assert dropped == ["benign (433)", "malignant (145)"]
    reused = load_or_create_splits(
        clean,
        REPO / "data_splits" / "busi_5fold_seed0.json",
        5,
        0,
        "busi",
        "group",
        report.manifest_hash,
        excluded_ids=dropped,
    )
    assert sum(len(f["val"]) for f in reused) == 778


# The near-duplicate clusters an audit of the local ISIC subset finds (data_splits/README.md), merged into the
# lesion groups of the committed ISIC split; test_canonical_isic_file_reproduces_with_the_audit finds them again.
ISIC_AUDIT_CLUSTERS = [["ISIC_0024894", "ISIC_0026107"], ["ISIC_0027636", "ISIC_0027994"]]


def _same_header(new: dict, committed: dict) -> bool:
    """Headers equal but for who wrote them (``created_by`` names the package version)."""
    return {k: v for k, v in new.items() if k != "created_by"} == {
        k: v for k, v in committed.items() if k != "created_by"
    }


@pytest.mark.slow
def test_canonical_isic_file_reproduces_from_metadata(shared) -> None:
    """The committed folds are exactly what the metadata and the audit's two clusters give (no images read)."""
    meta = shared("data", "isic2018", "HAM10000_metadata.csv")
    from medsg.data.canonical import isic_canonical

    header, folds = _canonical("isic2018_5fold_seed0.json")
    new_header, new_folds = isic_canonical(meta, 5, 0, ISIC_AUDIT_CLUSTERS)
    assert new_folds == folds
    assert new_header["n_groups"] == header["n_groups"] == 7468
    assert new_header["grouping_description"] == header["grouping_description"]


@pytest.mark.slow
def test_canonical_isic_file_reproduces_with_the_audit(shared, tmp_path: Path) -> None:
    """What ``python -m medsg.data.canonical isic2018 ... --audit-root`` writes is the committed file."""
    meta = shared("data", "isic2018", "HAM10000_metadata.csv")
    from medsg.data.canonical import main

    main(["isic2018", str(meta), "--audit-root", str(meta.parent), "--out-dir", str(tmp_path)])
    new_header, new_folds = read_splits(tmp_path / "isic2018_5fold_seed0.json")
    header, folds = _canonical("isic2018_5fold_seed0.json")
    assert new_folds == folds and new_header["audit_hash"] == header["audit_hash"]
    assert _same_header(new_header, header)


def _labelled(labels: list[str], groups: list[str] | None = None) -> pd.DataFrame:
    from medsg.data.manifest import make_manifest

    groups = groups or [f"g{i}" for i in range(len(labels))]
    return make_manifest(
        {"id": f"i{i}", "path": f"i{i}.png", "label": 0, "label_name": name, "group": group}
        for i, (name, group) in enumerate(zip(labels, groups, strict=True))
    )


def test_data_cross_validation_cannot_learn_is_refused_before_any_split():
    from medsg.data.splits import check_trainable_classes

    check_trainable_classes(_labelled(["a", "a", "b", "b"]))  # two classes, two groups each
    with pytest.raises(DataError, match=r"1 class\(es\) \['a'\]; a classifier needs at least 2"):
        check_trainable_classes(_labelled(["a", "a", "a"]))
    with pytest.raises(DataError, match=r"'b' \(2 image\(s\), one group\).*train without it"):
        check_trainable_classes(_labelled(["a", "a", "b", "b"], ["g0", "g1", "g2", "g2"]))
    with pytest.raises(DataError, match=r"\[\['Benign', 'benign'\]\] differ only in upper/lower case"):
        check_trainable_classes(_labelled(["benign", "benign", "Benign", "malignant", "malignant"]))


def test_a_fold_whose_training_part_lacks_a_class_is_named():
    from medsg.data.splits import check_folds_train_every_class

    manifest = _labelled(["a", "a", "b", "b"])
    good = [{"train": ["i0", "i2"], "val": ["i1", "i3"]}, {"train": ["i1", "i3"], "val": ["i0", "i2"]}]
    check_folds_train_every_class(manifest, good)
    bad = [{"train": ["i0", "i1"], "val": ["i2", "i3"]}, {"train": ["i2", "i3"], "val": ["i0", "i1"]}]
    with pytest.raises(DataError, match=r"fold 0: its training part has no image of \['b'\]"):
        check_folds_train_every_class(manifest, bad)


def test_a_reused_file_must_match_the_seed_and_dataset_and_warns_on_changed_content(
    tmp_path: Path, caplog
) -> None:
    df = toy()
    path = tmp_path / "s.json"
    load_or_create_splits(df, path, 5, 0, "toy", "g", "h")
    with pytest.raises(DataError, match=r"made for seed 0, but splits\.seed is 7"):
        load_or_create_splits(df, path, 5, 7, "toy", "g", "h")
    with pytest.raises(DataError, match=r"made for dataset 'toy', but data\.adapter is 'busi'"):
        load_or_create_splits(df, path, 5, 0, "busi", "g", "h")
    dropped = ["img005_0", "img005_1", "img005_2"]  # ids the audit excused: the content check still runs
    with caplog.at_level("WARNING"):
        load_or_create_splits(
            df[~df["id"].isin(dropped)], path, 5, 0, "toy", "g", "changed", excluded_ids=dropped
        )
    assert "audit hash it was made with differs" in caplog.text and "absent or excused ids" in caplog.text
