"""The audit finds broken files, duplicates and label conflicts; the policy turns them into a clean manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic import garbled_png, make_busi_replica, make_isic_replica, make_kvasir_replica, texture

from medsg.data import load_manifest, make_manifest
from medsg.data.audit import (
    AuditReport,
    UnionFind,
    apply_audit_policy,
    audit_manifest,
    inspect_file,
    merged_groups,
    near_duplicate_pairs,
    read_audit,
    summarize,
    write_audit,
)


@pytest.fixture(scope="module")
def busi(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, AuditReport]:
    root = make_busi_replica(tmp_path_factory.mktemp("busi"), n_per_class=4)
    manifest = load_manifest("busi", root)
    return manifest, audit_manifest(manifest)


def _kinds(report: AuditReport) -> dict[tuple[str, str], str]:
    return {(p["id"], p["role"]): p["kind"] for p in report.problems}


def test_problems_by_file(busi: tuple[pd.DataFrame, AuditReport]) -> None:
    _, report = busi
    assert _kinds(report) == {
        ("benign (7)", "image"): "zero_byte",
        ("benign (8)", "image"): "truncated",
        ("malignant (6)", "image"): "not_image",
        ("malignant (1)", "mask"): "mask_size_mismatch",
        ("malignant (7)", "mask"): "missing_mask",
    }
    assert report.broken_ids() == {"benign (7)", "benign (8)", "malignant (6)"}
    assert {p["severity"] for p in report.problems if p["kind"] == "missing_mask"} == {"warning"}


def test_duplicates_and_conflicts(busi: tuple[pd.DataFrame, AuditReport]) -> None:
    _, report = busi
    assert report.exact_duplicates == [["benign (1)", "malignant (5)"], ["benign (2)", "benign (5)"]]
    assert ["benign (3)", "benign (6)"] in report.near_duplicates  # brightened + re-saved copy
    assert ["benign (3)", "benign (6)"] not in report.exact_duplicates + report.pixel_duplicates
    assert report.conflicts == [
        {"ids": ["benign (1)", "malignant (5)"], "labels": ["benign", "malignant"], "kind": "exact"}
    ]
    assert report.conflict_ids() == {"benign (1)", "malignant (5)"}
    # the distinct random textures are not near duplicates of each other
    assert sum(len(c) for c in report.near_duplicates) == 6


def test_kvasir_reencoded_and_cross_class(tmp_path: Path) -> None:
    report = audit_manifest(load_manifest("kvasir", make_kvasir_replica(tmp_path)))
    assert ["polyps/dup_near", "polyps/img_1"] in report.near_duplicates
    assert ["polyps/dup_near", "polyps/img_1"] not in report.pixel_duplicates
    assert [c["ids"] for c in report.conflicts] == [["esophagitis/img_0", "ulcerative-colitis/conflict"]]
    assert {(p["id"], p["kind"]) for p in report.problems} == {("normal-cecum/truncated", "truncated")}


def test_pixel_identical_but_different_bytes(tmp_path: Path) -> None:
    arr = texture(np.random.default_rng(0), (24, 20))
    Image.fromarray(arr).save(tmp_path / "a.png", compress_level=0)
    Image.fromarray(arr).save(tmp_path / "b.png", compress_level=9)
    df = make_manifest(
        [
            {"id": "a", "path": tmp_path / "a.png", "label": 0, "label_name": "x"},
            {"id": "b", "path": tmp_path / "b.png", "label": 1, "label_name": "y"},
        ]
    )
    report = audit_manifest(df)
    assert report.exact_duplicates == [] and report.pixel_duplicates == [["a", "b"]]
    assert report.conflicts[0]["kind"] == "pixel"


def test_inspect_deep_and_missing_files(tmp_path: Path) -> None:
    deep = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 13  # 16-bit grey: valid, windowed
    Image.fromarray(deep).save(tmp_path / "deep.png")
    result = inspect_file(tmp_path / "deep.png")
    assert result["problem"] is None and result["mode"] == "I;16" and result["size"] == [64, 48]
    missing = inspect_file(tmp_path / "absent.png")
    assert missing["problem"] == "missing_file" and missing["action"]


def test_garbled_pixel_data_is_corrupt_and_dropped(tmp_path: Path) -> None:
    arr = texture(np.random.default_rng(0), (24, 20))
    bad = garbled_png(arr, tmp_path / "bad.png")
    with Image.open(bad) as im:  # the header is fine: PIL fails only when decoding the pixels
        assert im.size == (24, 20)
    result = inspect_file(bad)
    assert result["problem"] == "corrupt" and result["size"] == [24, 20] and result["detail"]
    _save_png(texture(np.random.default_rng(1), (24, 20)), tmp_path / "good.png")
    df = make_manifest(
        [
            {"id": "bad", "path": bad, "label": 0, "label_name": "x"},
            {"id": "good", "path": tmp_path / "good.png", "label": 0, "label_name": "x"},
        ]
    )
    report = audit_manifest(df)
    assert _kinds(report) == {("bad", "image"): "corrupt"} and report.broken_ids() == {"bad"}
    assert apply_audit_policy(df, report)["id"].tolist() == ["good"]


def _save_png(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_near_duplicate_threshold_is_applied() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, size=(3, 32), dtype=np.uint8)
    hashes[1] = hashes[0]
    hashes[1, :2] ^= 0xFF  # 16 bits differ
    thumbs = rng.normal(size=(3, 1024)).astype(np.float32)
    thumbs[1] = thumbs[0] * 2 + 5  # correlation 1 despite a contrast/brightness change
    assert [p[:3] for p in near_duplicate_pairs(hashes, thumbs, 16, 0.95)] == [(0, 1, 16)]
    assert near_duplicate_pairs(hashes, thumbs, 15, 0.95) == []
    assert near_duplicate_pairs(hashes, thumbs, 16, 1.01) == []


def test_policy_drop_and_keep(busi: tuple[pd.DataFrame, AuditReport]) -> None:
    manifest, report = busi
    dropped = apply_audit_policy(manifest, report, conflicts="drop")
    gone = set(manifest["id"]) - set(dropped["id"])
    assert gone == {"benign (7)", "benign (8)", "malignant (6)", "benign (1)", "malignant (5)"}
    kept = apply_audit_policy(manifest, report, conflicts="keep")
    assert set(manifest["id"]) - set(kept["id"]) == {"benign (7)", "benign (8)", "malignant (6)"}
    groups = kept.set_index("id")["group"]
    assert groups["benign (1)"] == groups["malignant (5)"]
    assert groups["benign (3)"] == groups["benign (6)"] == "benign (3)"
    assert groups["benign (2)"] == groups["benign (5)"]
    assert groups["benign (4)"] == "benign (4)"
    # the mask with the wrong size is removed, the image kept
    assert "malignant (1)_mask.png" not in kept.set_index("id").loc["malignant (1)", "mask_paths"]
    assert list(kept.columns) == list(manifest.columns)
    with pytest.raises(ValueError, match="drop"):
        apply_audit_policy(manifest, report, conflicts="ignore")


def test_duplicate_clusters_merge_with_lesion_groups_transitively() -> None:
    df = pd.DataFrame(
        {"id": list("abcde"), "group": ["L1", "L1", "L2", "L3", "L4"], "label": 0, "label_name": "x"}
    )
    # b~c links lesions L1 and L2; d~e links L3 and L4; a separate cluster never touches L1/L2
    assert merged_groups(df, [["b", "c"], ["d", "e"]]) == ["L1", "L1", "L1", "L3", "L3"]
    uf = UnionFind([1, 2, 3])
    uf.union(3, 2)
    assert sorted(uf.groups()) == [[1], [2, 3]]


def test_policy_keeps_extra_columns_and_merges_the_split_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrs = [texture(rng, (24, 20)) for _ in range(3)]
    paths = [_save_png(a, tmp_path / f"{i}.png") for i, a in enumerate(arrs)]
    dup = _save_png(arrs[0], tmp_path / "dup.png")  # byte-identical to 0.png, filed under another patient
    rows = [
        {"id": "a", "path": paths[0], "label": 0, "label_name": "x", "patient_id": "P2", "site": "s1"},
        {"id": "b", "path": paths[1], "label": 0, "label_name": "x", "patient_id": "P3", "site": "s1"},
        {"id": "c", "path": paths[2], "label": 0, "label_name": "x", "patient_id": "", "site": "s2"},
        {"id": "d", "path": dup, "label": 0, "label_name": "x", "patient_id": "P1", "site": "s2"},
    ]
    df = make_manifest(rows)
    report = audit_manifest(df)
    clean = apply_audit_policy(df, report, group_col="patient_id").set_index("id")
    assert list(clean.columns[-2:]) == ["patient_id", "site"]
    assert clean["site"].tolist() == ["s1", "s1", "s2", "s2"]  # other extra columns untouched
    # the duplicate pair a~d joins patients P2 and P1; an empty patient id stays the image's own group
    assert clean["patient_id"].tolist() == ["P1", "P3", "c", "P1"]
    assert clean.loc["a", "group"] == clean.loc["d", "group"]
    plain = apply_audit_policy(df, report).set_index("id")  # default: only `group` is merged
    assert plain["patient_id"].tolist() == ["P2", "P3", "", "P1"]
    with pytest.raises(ValueError, match="patient"):
        apply_audit_policy(df.drop(columns="patient_id"), report, group_col="patient_id")


def test_isic_policy_keeps_lesion_groups(tmp_path: Path) -> None:
    manifest = load_manifest("isic2018", make_isic_replica(tmp_path, with_problems=True))
    report = audit_manifest(manifest)
    clean = apply_audit_policy(manifest, report)
    assert set(manifest["id"]) - set(clean["id"]) == {"ISIC_9999990", "ISIC_9999991"}
    assert clean["group"].nunique() == 21


def test_report_json_summary_and_cli(
    busi: tuple[pd.DataFrame, AuditReport], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, report = busi
    path = write_audit(report, tmp_path / "audit.json")
    assert json.loads(path.read_text())["conflicts"][0]["ids"] == ["benign (1)", "malignant (5)"]
    assert read_audit(path) == report
    text = summarize(report)
    assert "cross-class conflicts (same image, different labels): 1" in text and "malignant (5)" in text
    # every problem is named with its file and what to do
    for problem in report.problems:
        assert problem["path"] in text and problem["action"] in text, problem
    from medsg import cli

    root = Path(report.problems[0]["path"]).parents[2]
    assert (
        cli.main(["audit", "--adapter", "busi", "--root", str(root), "--out", str(tmp_path / "cli.json")])
        == 0
    )
    assert (tmp_path / "cli.json").is_file() and "conflicts" in capsys.readouterr().out
    # one error path: a user error is one line and exit status 2, as for every command
    assert cli.main(["audit", "--adapter", "busi", "--root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medsg: error:") and "missing" in err[0]


def test_manifest_hash_ignores_location_and_order(tmp_path: Path) -> None:
    a = load_manifest("busi", make_busi_replica(tmp_path / "a", n_per_class=2, with_problems=False))
    b = load_manifest("busi", make_busi_replica(tmp_path / "b", n_per_class=2, with_problems=False))
    ha = audit_manifest(a).manifest_hash
    assert ha == audit_manifest(b.iloc[::-1]).manifest_hash
    assert ha != audit_manifest(a.assign(label_name=a["label_name"].iloc[::-1].to_numpy())).manifest_hash


@pytest.mark.slow
def test_real_busi_conflict(shared) -> None:
    report = audit_manifest(load_manifest("busi", shared("data", "busi")))
    assert {
        "ids": ["benign (433)", "malignant (145)"],
        "labels": ["benign", "malignant"],
        "kind": "exact",
    } in report.conflicts
    assert not [p for p in report.problems if p["severity"] == "error"]
    assert len(report.near_duplicates) > 100


def test_empty_cells_of_a_users_grouping_column_are_counted_in_a_warning(caplog):
    import pandas as pd

    from medsg.data.audit import merged_groups

    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "", None]})
    with caplog.at_level("WARNING", logger="medsg.data.audit"):
        groups = merged_groups(df, [], "patient_id")
    assert groups == ["p1", "p1", "c", "d"]
    assert "patient_id: 2 of 4 row(s) have an empty cell" in caplog.text
