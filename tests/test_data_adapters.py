"""Adapters read the downloaded layouts into the shared manifest schema and reject malformed ones clearly."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from synthetic import make_busi_replica, make_isic_replica, make_kvasir_replica

from medsg.core.errors import DataError
from medsg.data import COLUMNS, class_names, load_manifest, mask_list, read_manifest, save_manifest
from medsg.data.busi import load_busi
from medsg.data.isic2018 import ISIC_CLASSES, metadata_manifest


@pytest.fixture()
def busi_root(tmp_path: Path) -> Path:
    return make_busi_replica(tmp_path / "busi", n_per_class=4, with_problems=False)


def test_busi_manifest_schema_ids_and_masks(busi_root: Path) -> None:
    df = load_manifest("busi", busi_root)
    assert list(df.columns) == list(COLUMNS)
    assert df["label_name"].value_counts().to_dict() == {"benign": 4, "malignant": 4, "normal": 4}
    assert df["id"].tolist()[:4] == ["benign (1)", "benign (2)", "benign (3)", "benign (4)"]
    assert (df["label"] == df["label_name"].map({"benign": 0, "malignant": 1, "normal": 2})).all()
    masks = mask_list(df.set_index("id").loc["benign (1)", "mask_paths"])
    assert [Path(m).name for m in masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    assert all(Path(p).is_absolute() for p in df["path"])
    assert (df["group"] == df["id"]).all()


def test_busi_accepts_either_root(busi_root: Path) -> None:
    a = load_manifest("busi", busi_root)
    b = load_manifest("busi", busi_root / "Dataset_BUSI_with_GT")
    pd.testing.assert_frame_equal(a, b)


def test_busi_natural_order(tmp_path: Path) -> None:
    df = load_manifest("busi", make_busi_replica(tmp_path, n_per_class=11, with_problems=False))
    benign = df[df["label_name"] == "benign"]["id"].tolist()
    assert benign[1] == "benign (2)" and benign[-1] == "benign (11)"


def test_busi_unknown_and_missing_class_folders(busi_root: Path) -> None:
    base = busi_root / "Dataset_BUSI_with_GT"
    (base / "cancer").mkdir()
    with pytest.raises(DataError, match="unknown class folder.*cancer"):
        load_manifest("busi", busi_root)
    (base / "cancer").rmdir()
    shutil.rmtree(base / "normal")
    with pytest.raises(DataError, match="BUSI not found|normal"):
        load_manifest("busi", busi_root)


def test_missing_root_names_path(tmp_path: Path) -> None:
    for adapter in ("busi", "kvasir", "isic2018", "imagefolder"):
        with pytest.raises(DataError, match="nowhere"):
            load_manifest(adapter, tmp_path / "nowhere")


def test_kvasir_manifest(tmp_path: Path) -> None:
    root = make_kvasir_replica(tmp_path, n_per_class=2, with_problems=False)
    df = load_manifest("kvasir", root)
    assert len(df) == 16
    assert class_names("kvasir") == sorted(class_names("kvasir")) and len(class_names("kvasir")) == 8
    assert df.groupby("label_name")["label"].first().to_dict() == {
        c: i for i, c in enumerate(class_names("kvasir"))
    }
    assert df["id"].iloc[0] == "dyed-lifted-polyps/img_0"
    assert (df["mask_paths"] == "").all()


def test_kvasir_unknown_class(tmp_path: Path) -> None:
    root = make_kvasir_replica(tmp_path, n_per_class=1, with_problems=False)
    (root / "kvasir-dataset-v2" / "polyp").mkdir()
    with pytest.raises(DataError, match="polyp"):
        load_manifest("kvasir", root)


def test_isic_with_metadata_groups_by_lesion(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=2, images_per_lesion=3)
    df = load_manifest("isic2018", root)
    assert len(df) == 7 * 2 * 3
    assert df["group"].nunique() == 14
    assert df.groupby("group")["label"].nunique().max() == 1
    assert class_names("isic2018") == list(ISIC_CLASSES) == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert df.groupby("label_name")["label"].first().to_dict() == {c: i for i, c in enumerate(ISIC_CLASSES)}


def test_isic_without_metadata_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1, with_metadata=False)
    with caplog.at_level(logging.WARNING):
        df = load_manifest("isic2018", root)
    assert (df["group"] == df["id"]).all()
    assert "HAM10000_metadata.csv" in caplog.text


def test_isic_groundtruth_in_official_subfolder(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1)
    sub = root / "ISIC2018_Task3_Training_GroundTruth"
    sub.mkdir()
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").rename(sub / "ISIC2018_Task3_Training_GroundTruth.csv")
    assert len(load_manifest("isic2018", root)) == 14


def test_isic_rejects_non_onehot_and_wrong_columns(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1)
    csv = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = csv.read_text().splitlines()
    bad = lines[:]
    bad[2] = bad[2].split(",")[0] + ",1.0,1.0,0.0,0.0,0.0,0.0,0.0"
    csv.write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match="not one-hot.*" + lines[2].split(",")[0]):
        load_manifest("isic2018", root)
    csv.write_text("\n".join([lines[0].replace("VASC", "VAS")] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="expected columns"):
        load_manifest("isic2018", root)


def test_isic_missing_image_named(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1)
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0024307.jpg").unlink()
    with pytest.raises(DataError, match="ISIC_0024307"):
        load_manifest("isic2018", root)


def test_isic_metadata_manifest_maps_dx(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1, images_per_lesion=2)
    df = metadata_manifest(root / "HAM10000_metadata.csv")
    truth = load_manifest("isic2018", root).set_index("id")
    assert (df.set_index("id")["label"] == truth.loc[df["id"], "label"]).all()
    assert df["group"].str.startswith("HAM_").all()


def test_imagefolder_and_csv(tmp_path: Path) -> None:
    root = make_kvasir_replica(tmp_path, n_per_class=2, with_problems=False) / "kvasir-dataset-v2"
    df = load_manifest("imagefolder", root)
    assert class_names("imagefolder", root) == class_names("kvasir")
    assert df["id"].iloc[0] == "dyed-lifted-polyps/img_0.jpg"
    csv = tmp_path / "list.csv"
    csv.write_text(
        "path,label,group,mask\npolyps/img_0.jpg,polyps,p1,polyps/img_1.jpg\nesophagitis/img_0.jpg,esophagitis,,\n"
    )
    shutil.copytree(root / "polyps", tmp_path / "polyps")
    shutil.copytree(root / "esophagitis", tmp_path / "esophagitis")
    df = load_manifest("csv", csv)
    assert df["label_name"].tolist() == ["polyps", "esophagitis"]
    assert df["label"].tolist() == [1, 0]
    assert df["group"].tolist() == ["p1", "esophagitis/img_0.jpg"]
    assert df["path"].iloc[0] == str(tmp_path / "polyps" / "img_0.jpg")
    assert mask_list(df["mask_paths"].iloc[0]) == [str(tmp_path / "polyps" / "img_1.jpg")]
    assert class_names("csv", csv) == ["esophagitis", "polyps"]


def test_csv_wrong_columns(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"list\.csv.*missing \['path'\]"):
        load_manifest("csv", csv)
    csv.write_text("path,label,label_name\na.png,x,y\n")
    with pytest.raises(DataError, match=r"list\.csv.*not allowed \['label_name'\]"):
        load_manifest("csv", csv)


def test_csv_extra_columns_pass_through_and_roundtrip(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("path,label,patient_id,site\na.png,x,P7,north\nb.png,y,,south\n")
    df = load_manifest("csv", csv)
    assert list(df.columns) == [*COLUMNS, "patient_id", "site"]
    assert df["patient_id"].tolist() == ["P7", ""] and df["site"].tolist() == ["north", "south"]
    save_manifest(df, tmp_path / "m.csv")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.csv"), df)


def test_unknown_adapter() -> None:
    with pytest.raises(DataError, match="busi"):
        load_manifest("mnist", "/tmp")


def test_manifest_roundtrip(busi_root: Path, tmp_path: Path) -> None:
    df = load_manifest("busi", busi_root)
    save_manifest(df, tmp_path / "m.csv")
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "m.csv"), df)


@pytest.mark.slow
def test_real_busi_and_isic_counts(shared) -> None:
    busi = load_manifest("busi", shared("data", "busi"))  # slow: skips without ../shared, even in CI
    assert busi["label_name"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    assert max(len(mask_list(m)) for m in busi["mask_paths"]) == 3
    isic = load_manifest("isic2018", shared("data", "isic2018"))
    assert len(isic) == 5984 and isic["group"].str.startswith("HAM_").all()
    assert isic["label_name"].value_counts()["NV"] == 4323


def test_package_exports_resolve_and_stay_lazy() -> None:
    import subprocess
    import sys

    import medsg.data

    for name in medsg.data.__all__:
        assert getattr(medsg.data, name) is not None, name
    assert set(medsg.data._LAZY) <= set(medsg.data.__all__)
    assert medsg.data.build_transforms.__module__ == "medsg.data.transforms"
    with pytest.raises(AttributeError, match="no_such_name"):
        medsg.data.no_such_name  # noqa: B018
    code = "import sys, medsg.data; print(sorted({'monai', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hidden_and_foreign_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_kvasir_replica(tmp_path, n_per_class=1, with_problems=False)
    polyps = root / "kvasir-dataset-v2" / "polyps"
    (polyps / "._img_0.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (polyps / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        df = load_manifest("kvasir", root)
    assert df[df["label_name"] == "polyps"]["id"].tolist() == ["polyps/img_0"]
    assert "notes.txt" in caplog.text and "._img_0" not in caplog.text
    folder = tmp_path / "folder"
    shutil.copytree(root / "kvasir-dataset-v2", folder)
    assert "polyps/._img_0.jpg" not in set(load_manifest("imagefolder", folder)["id"])


def test_missing_shared_data_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    absent = ("data", "no_such_dataset_xyz")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_dataset_xyz not found"):
        conftest.require_shared(*absent)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_dataset_xyz not found \(looked in .*shared"):
        conftest.require_shared(*absent)
    with pytest.raises(pytest.skip.Exception):  # slow/bench real-data tests keep skipping in CI
        conftest.require_shared(*absent, required_in_ci=False)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        conftest.require_shared(*absent)


def test_isic_test_folder_read_as_training_names_the_option(tmp_path: Path) -> None:
    root = make_isic_replica(tmp_path, n_lesions_per_class=1)
    (root / "ISIC2018_Task3_Training_Input").rename(root / "ISIC2018_Task3_Test_Input")
    with pytest.raises(DataError, match=r"holds the test subset: pass --option subset=test"):
        load_manifest("isic2018", root)
    with pytest.raises(DataError, match=r"image folder not found: .*Training_Input\.$"):
        load_manifest("isic2018", tmp_path / "nothing_here")


def test_a_missing_model_folder_says_it_does_not_exist(tmp_path: Path) -> None:
    from medsg.deploy.package import load_model

    with pytest.raises(DataError, match="model folder .*nope does not exist"):
        load_model(tmp_path / "nope")


def test_an_unknown_adapter_option_is_refused_by_name_with_the_ones_it_takes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no option\(s\) \['subet'\].*takes subset, metadata"):
        load_manifest("isic2018", tmp_path, subet="test")
    with pytest.raises(DataError, match=r"'csv' has no option\(s\) \['foo'\].*takes none"):
        load_manifest("csv", tmp_path / "x.csv", foo="bar")


def test_repeated_ids_name_their_files_and_the_adapter_that_keeps_folders(tmp_path: Path) -> None:
    for name in ("benign", "malignant", "normal"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "case1.png")
    with pytest.raises(DataError, match=r"repeated: \['case1'.*imagefolder adapter"):
        load_busi(tmp_path)


def test_isic_groundtruth_in_ham10000_layout_reads_as_the_one_hot_one(tmp_path: Path, caplog) -> None:
    """Harvard Dataverse ships the test labels as HAM10000 rows (lesion_id, image_id, dx, ...): the same
    labels as the challenge's one-hot CSV, and the lesion ids become the groups."""
    root = make_isic_replica(tmp_path / "isic", with_metadata=True)
    onehot = load_manifest("isic2018", root)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    test = tmp_path / "test"
    shutil.copytree(root / "ISIC2018_Task3_Training_Input", test / "ISIC2018_Task3_Test_Input")
    ham = meta.assign(dx=meta["dx"].str.upper(), dataset="vidir_modern")  # case and extra columns tolerated
    ham.to_csv(test / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    read = load_manifest("isic2018", test, subset="test")
    assert read["id"].tolist() == onehot["id"].tolist()
    assert read["label_name"].tolist() == onehot["label_name"].tolist()
    assert read["group"].tolist() == meta.set_index("image_id").loc[read["id"], "lesion_id"].tolist()
    ham.assign(lesion_id="").to_csv(test / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    with caplog.at_level("WARNING", logger="medsg.data.isic2018"):  # empty lesion ids: not quietly ungrouped
        ungrouped = load_manifest("isic2018", test, subset="test")
    assert (
        ungrouped["group"].tolist() == ungrouped["id"].tolist()
        and "each image is its own group" in caplog.text
    )
    ham.loc[0, "dx"] = "scc"
    ham.to_csv(test / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    with pytest.raises(DataError, match=r"unknown dx value\(s\) \['scc'\]"):
        load_manifest("isic2018", test, subset="test")


def test_imagefolder_names_the_sub_folders_it_does_not_read(tmp_path: Path, caplog) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "nested").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
        Image.new("RGB", (8, 8)).save(tmp_path / name / "nested" / "y.png")
    with caplog.at_level("WARNING"):
        manifest = load_manifest("imagefolder", tmp_path)
    assert sorted(manifest["id"]) == ["a/x.png", "b/x.png"]
    assert caplog.text.count("ignoring the sub-folder") == 2


def test_imagefolder_classes_option_orders_the_names_as_it_orders_the_labels(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    manifest = load_manifest("imagefolder", tmp_path, classes=["b", "a"])
    names = class_names("imagefolder", tmp_path, classes=["b", "a"])
    assert all(
        names[label] == name for label, name in zip(manifest["label"], manifest["label_name"], strict=True)
    )
    assert names == ["b", "a"] and class_names("imagefolder", tmp_path) == ["a", "b"]


def test_imagefolder_leaves_lesion_masks_out_of_the_classes(tmp_path: Path, caplog) -> None:
    """BUSI's folders hold each scan's mask beside it: read as images, the masks would be trivially learnable
    scans (the normal class's are black) whose twin may sit in the test fold."""
    root = tmp_path / "Dataset_BUSI_with_GT"
    for name in ("benign", "normal"):
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (8, 8)).save(root / name / f"{name} ({i}).png")
            Image.new("L", (8, 8)).save(root / name / f"{name} ({i})_mask.png")
    Image.new("L", (8, 8)).save(root / "benign" / "benign (1)_mask_1.png")
    with caplog.at_level(logging.WARNING):
        manifest = load_manifest("imagefolder", root)
    assert sorted(manifest["id"]) == [
        "benign/benign (1).png",
        "benign/benign (2).png",
        "normal/normal (1).png",
        "normal/normal (2).png",
    ]
    assert "3 file(s)" in caplog.text and "use adapter busi" in caplog.text


def test_imagefolder_keeps_images_that_are_only_named_like_masks(tmp_path: Path) -> None:
    """A face-mask dataset names its images with_mask_12.png: no scan 'with.png' beside it, so not a mask."""
    for name in ("with_mask", "without_mask"):
        (tmp_path / name).mkdir()
        for i in (1, 12):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{name}_{i}.png")
    assert len(load_manifest("imagefolder", tmp_path)) == 4


def test_an_empty_metadata_lesion_id_does_not_override_the_ground_truths(tmp_path: Path, caplog) -> None:
    """HAM10000 ground truth beside a metadata file whose lesion_id is blank for some images: the ground
    truth's lesion ids stay the groups, and only images with neither are counted as ungrouped."""
    root = make_isic_replica(tmp_path / "isic", with_metadata=True)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    test = tmp_path / "test"
    shutil.copytree(root / "ISIC2018_Task3_Training_Input", test / "ISIC2018_Task3_Test_Input")
    meta.to_csv(test / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    blank = meta.assign(lesion_id="")
    blank.loc[0, "lesion_id"] = "L-meta"
    blank.to_csv(tmp_path / "meta.csv", index=False)
    with caplog.at_level("WARNING", logger="medsg.data.isic2018"):
        read = load_manifest("isic2018", test, subset="test", metadata=str(tmp_path / "meta.csv"))
    truth = meta.set_index("image_id")["lesion_id"]
    want = [("L-meta" if i == meta.loc[0, "image_id"] else truth[i]) for i in read["id"]]
    assert read["group"].tolist() == want and "its own group" not in caplog.text
