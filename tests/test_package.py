"""From cross-validation to use, on one tiny synthetic run (2 folds + the final model, sgformer_tiny, 1 epoch):
calibration per fold, --fold all, export, package round trip and tampering, predict, evaluate."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from synthetic import PACKAGE_RECIPE, bare_package, member_raw_probs

from medsg import cli
from medsg.calibration import PRIOR_KEY, apply_temperature, fit_floor_strength
from medsg.commands.flags import fold_arg
from medsg.core.errors import CheckpointError, DataError
from medsg.core.run_folder import ALL
from medsg.demo import make_synthetic_busi
from medsg.deploy.package import CHECKSUMS_FILE, PACKAGE_FILE, export_package, load_model, load_package
from medsg.deploy.predict import InputItem, PredictOptions, predict_items
from medsg.workflows.experiment import run_experiment

PKG = {"experiment.name": "pkg", **PACKAGE_RECIPE}  # sgformer_tiny (the fixture names it)


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("pkg")
    root = make_synthetic_busi(out / "data", n_per_class=4, size=40, seed=3)
    cfg = make_config(root, out, PKG, model="sgformer_tiny")
    run_dir = run_experiment(cfg, folds=[0, 1, "all"], quiet=True)
    package = export_package(run_dir, out / "package")
    return cfg, run_dir, package, out


def manifest(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "manifest.csv", dtype=str, keep_default_na=False).set_index("id", drop=False)


@pytest.mark.e2e
def test_each_fold_calibrates_on_its_inner_validation_split_only(run):
    _, run_dir, _, _ = run
    for fold in (0, 1):
        folder = run_dir / f"fold_{fold}"
        ids = json.loads((folder / "inner_split.json").read_text())
        record = json.loads((folder / "calibration.json").read_text())
        val = pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})
        assert sorted(val["id"]) == sorted(ids["val"]) and not set(val["id"]) & set(ids["test"])
        assert record["fitted"] and record["n_val"] == len(ids["val"]) and record["temperature"] > 0
        raw = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
        cal = pd.read_csv(folder / "calibrated_predictions.csv", dtype={"id": str})
        cols = [c for c in raw.columns if c.startswith("p_")]
        assert list(cal["id"]) == list(raw["id"]) and (cal["y_pred"] == raw["y_pred"]).all()
        want = apply_temperature(raw[cols].to_numpy(), record["temperature"])
        np.testing.assert_allclose(cal[cols].to_numpy(), want, atol=1e-12)
        # the majority_floor strength is fitted on the same temperature-scaled validation predictions
        val_probs = apply_temperature(val[cols].to_numpy(), record["temperature"])
        refit = fit_floor_strength(val["y_true"].to_numpy(), val_probs, record[PRIOR_KEY]["class_prior"])
        assert record[PRIOR_KEY]["floor_strength"] == refit["floor_strength"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"before", "after", "per_fold"} <= set(summary["calibration"])
    report = (run_dir.parents[1] / "report" / "report.md").read_text()
    assert "## Calibration (pooled out-of-fold)" in report and "Raw [95% CI]" in report


@pytest.mark.e2e
def test_fold_all_trains_on_every_id_for_the_median_selected_epochs(run):
    _, run_dir, _, _ = run
    folder = run_dir / "fold_all"
    ids = json.loads((folder / "inner_split.json").read_text())
    assert ids["train"] == sorted(manifest(run_dir)["id"]) and ids["val"] == ids["test"] == []
    plan = json.loads((folder / "final.json").read_text())
    selected = [
        json.loads((run_dir / f"fold_{f}" / "metrics.json").read_text())["best_epoch"] for f in (0, 1)
    ]
    assert plan["epochs"] == int(np.floor(np.median(selected) + 0.5)) == plan["epochs_trained"]
    assert "median of the epochs selected" in plan["epochs_rule"] and plan["n_train"] == len(ids["train"])
    temps = [
        json.loads((run_dir / f"fold_{f}" / "calibration.json").read_text())["temperature"] for f in (0, 1)
    ]
    record = json.loads((folder / "calibration.json").read_text())
    assert record["temperature"] == pytest.approx(np.median(temps)) and not record["fitted"]
    floors = [
        json.loads((run_dir / f"fold_{f}" / "calibration.json").read_text())[PRIOR_KEY]["floor_strength"]
        for f in (0, 1)
    ]
    assert record[PRIOR_KEY]["floor_strength"] == pytest.approx(np.median(floors))
    assert (folder / "DONE").is_file() and (folder / "checkpoint_best.pt").is_file()
    assert fold_arg("all") == ALL and fold_arg("3") == 3


@pytest.mark.e2e
def test_package_round_trip_gives_the_runs_predictions(run):
    _, run_dir, package, _ = run
    meta = json.loads((package / PACKAGE_FILE).read_text())
    assert [m["name"] for m in meta["members"]] == ["0", "1", "all"] and meta["default"] == "folds"
    card = (package / "MODEL_CARD.md").read_text()
    assert "describe single-fold models" in card and "not describe the shipped ensemble" in card
    assert "median of the 2 cross-validation folds' temperatures" in card
    # the run's config travels byte for byte; the card reads it typed, paths as the config wrote them
    assert (package / "config.yaml").read_bytes() == (run_dir / "config.yaml").read_bytes()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert f"at `{saved['data']['root']}`" in card and f"`eval.decision: {saved['eval']['decision']}`" in card
    assert not list(package.rglob("*.pt")) and len(list((package / "weights").glob("*.safetensors"))) == 3
    bundle, rows = load_package(package), manifest(run_dir)
    for member in bundle.select("folds"):
        preds = pd.read_csv(run_dir / f"fold_{member.name}" / "predictions.csv", dtype={"id": str})
        cal = pd.read_csv(run_dir / f"fold_{member.name}" / "calibrated_predictions.csv", dtype={"id": str})
        cols = [f"p_{c}" for c in bundle.class_names]
        got = member_raw_probs(bundle, member, list(rows.loc[preds["id"], "path"]))
        np.testing.assert_allclose(got, preds[cols].to_numpy(), atol=1e-5)
        np.testing.assert_allclose(
            apply_temperature(got, member.temperature), cal[cols].to_numpy(), atol=1e-5
        )
    # the run folder itself predicts the same
    from_run = load_model(run_dir)
    assert from_run.kind == "run" and [m.temperature for m in from_run.members] == [
        m.temperature for m in bundle.members
    ]


@pytest.mark.e2e
def test_ensemble_probabilities_are_the_mean_of_the_folds_calibrated_ones(run, tmp_path):
    _, run_dir, package, _ = run
    bundle = load_package(package)
    paths = list(manifest(run_dir)["path"])[:5]
    items = [InputItem(f"i{k}", p) for k, p in enumerate(paths)]
    result = predict_items(bundle, items, tmp_path, PredictOptions(), collect=True)
    members = bundle.select("folds")
    want = np.mean(
        [apply_temperature(member_raw_probs(bundle, m, paths), m.temperature) for m in members], axis=0
    )
    np.testing.assert_allclose(np.stack(result.probs), want, atol=1e-6)
    frame = pd.read_csv(tmp_path / "predictions.csv")
    assert list(frame["id"]) == [i.id for i in items]
    np.testing.assert_allclose(frame[[f"p_{c}" for c in bundle.class_names]].to_numpy(), want, atol=1e-6)
    spread = np.std(
        [apply_temperature(member_raw_probs(bundle, m, paths), m.temperature) for m in members], axis=0
    )
    picked = spread[np.arange(len(paths)), want.argmax(1)]
    np.testing.assert_allclose(frame["fold_spread"], picked, atol=1e-6)
    info = json.loads((tmp_path / "predict.json").read_text())
    assert "calibrated" in info["calibrated"] and info["n_predicted"] == 5


@pytest.mark.e2e
def test_a_tampered_or_mismatched_package_is_refused(run, tmp_path):
    _, _, package, _ = run
    changed = shutil.copytree(package, tmp_path / "changed")
    weights = changed / "weights" / "0.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"failed its checksum check \(changed: \['weights/0.safetensors'\]"
    ):
        load_model(changed)
    extra = shutil.copytree(package, tmp_path / "extra")
    (extra / "weights" / "evil.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not listed"):
        load_model(extra)
    # a class list that does not fit the weights is refused even with matching checksums
    wrong = shutil.copytree(package, tmp_path / "wrong")
    meta = json.loads((wrong / PACKAGE_FILE).read_text())
    meta["class_names"], meta["num_classes"] = ["a", "b", "c", "d"], 4
    (wrong / PACKAGE_FILE).write_text(json.dumps(meta))
    from medsg.deploy.package import _write_checksums

    _write_checksums(wrong)
    bundle = load_model(wrong)
    with pytest.raises(CheckpointError, match="classifier head does not match the class list"):
        bundle.build(bundle.members[0])
    assert cli.main(["predict", str(changed), str(tmp_path), "--out", str(tmp_path / "p")]) == 2


@pytest.mark.e2e
def test_predict_names_and_skips_unreadable_inputs_and_flags_unlike_images(run, tmp_path, capsys):
    _, run_dir, package, _ = run
    good = list(manifest(run_dir)["path"])[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    colourful = tmp_path / "colourful.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(colourful)
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [good[1], "missing.png"]}).to_csv(listing, index=False)
    out = tmp_path / "out"
    args = ["predict", str(package), good[0], str(broken), str(colourful), str(listing), "--out", str(out)]
    assert cli.main([*args, "--tta"]) == 1
    err = capsys.readouterr().err
    assert "2 unreadable input(s) skipped" in err
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["broken.png", "missing.png"]
    frame = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(frame) == 3 and set(frame.columns) >= {
        "fold_spread",
        "fold_agreement",
        "ood_flag",
        "ood_reasons",
    }
    flagged = frame.set_index("id").loc["colourful.png"]
    assert flagged["ood_flag"] and "chroma" in flagged["ood_reasons"]
    assert flagged["ood_reasons"].startswith("unlike the training data: ")
    info = json.loads((out / "predict.json").read_text())
    assert info["n_skipped"] == 2 and info["n_predicted"] == 3 and "flip" in info["tta"]
    assert info["n_flagged_by_kind"]["unlike the training data"] >= 1
    # the reader's reason, not MONAI's "applying transform <object>"
    reason = skipped.set_index(skipped["path"].map(lambda p: Path(p).name)).loc["broken.png", "reason"]
    assert "not an image medsg reads" in reason and "applying transform" not in reason
    # inputs from the training data are named, not silently scored as if new
    assert frame.set_index("id").loc[Path(good[0]).name, "in_training_data"].startswith(("exact", "pixel"))
    assert frame.set_index("id").loc["colourful.png", "in_training_data"] == ""


@pytest.mark.e2e
def test_predict_says_each_kind_of_flag_in_the_csvs_words(run, tmp_path, capsys):
    _, run_dir, package, _ = run
    colourful = tmp_path / "colourful.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(colourful)
    assert cli.main(["predict", str(package), str(colourful), "--out", str(tmp_path / "o"), "--explain"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert "1 flagged (" in line and "1 unlike the training data" in line and "ood_reasons says why" in line
    (panel,) = (tmp_path / "o" / "explain").glob("*.png")
    from medsg.explain.cases import Case
    from medsg.explain.ensemble import ensemble_panel

    image = np.asarray(Image.open(colourful).convert("RGB"))
    maps = {"significance": np.linspace(0, 1, 224 * 224).reshape(224, 224)}
    case = Case("c", str(colourful), (0.2, 0.5, 0.3))
    plain = ensemble_panel(image, maps, case, ["a", "b", "c"], 2, (224, 224))
    marked = ensemble_panel(
        image, maps, case, ["a", "b", "c"], 2, (224, 224), flag="unlike the training data: x"
    )
    assert plain != marked  # the flag is drawn on the panel


@pytest.mark.e2e
def test_predict_explain_writes_ensemble_panels(run, tmp_path):
    _, run_dir, package, _ = run
    image = list(manifest(run_dir)["path"])[0]
    assert cli.main(["predict", str(package), image, "--explain", "--out", str(tmp_path)]) == 0
    panels = list((tmp_path / "explain").glob("*.png"))
    assert len(panels) == 1 and Image.open(panels[0]).size[0] > 300


@pytest.mark.e2e
def test_evaluate_a_synthetic_external_set_with_overlap_audit(run, tmp_path):
    _, run_dir, package, out = run
    test_root = make_synthetic_busi(tmp_path / "ext", n_per_class=2, size=40, seed=11)
    leaked = manifest(run_dir).iloc[0]
    shutil.copyfile(leaked["path"], test_root / "benign" / "benign (3).png")  # a training image, relabelled
    shutil.copyfile(leaked["path"].replace(".png", "_mask.png"), test_root / "benign" / "benign (3)_mask.png")
    report = tmp_path / "eval"
    args = ["evaluate", str(package), "--adapter", "busi", "--root", str(test_root), "--out", str(report)]
    assert cli.main(args) == 0
    summary = json.loads((report / "evaluation.json").read_text())
    assert summary["overlap"]["n"] == 1 and summary["overlap"]["by_kind"] == {"exact": 1}
    assert summary["n_scored"] == 7 and not summary["overlap"]["excluded"]
    assert summary["title"].startswith("External test:")
    stored = package / "cv" / "oof_predictions.csv.xz"  # the CV ROC above was read from it
    assert lzma.decompress(stored.read_bytes()) == (run_dir / "oof_predictions.csv").read_bytes()
    assert not (package / "cv" / "oof_predictions.csv").exists()
    page = (report / "report.md").read_text()
    assert "External test" in page and "figures/cv_roc.png" in page and "figures/test_roc.png" in page
    rule = json.loads((package / "cv" / "summary.json").read_text())["decision"]["headline"]
    assert f"single-fold models ({rule} rule, as its report's headline)" in page  # not "uncalibrated"
    assert (report / "report.html").is_file() and (report / "overlap.csv").is_file()
    assert cli.main([*args, "--exclude-overlap", "--out", str(tmp_path / "eval2")]) == 0
    excluded = json.loads((tmp_path / "eval2" / "evaluation.json").read_text())
    assert excluded["n_scored"] == 6 and excluded["overlap"]["excluded"]
    # labels the model does not know are refused by name, with their counts
    from medsg.deploy.evaluate import EvaluateRequest, evaluate

    kvasir = tmp_path / "kv"
    for name in ("a", "benign"):
        (kvasir / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(kvasir / name / "x.png")
    with pytest.raises(DataError, match=r"label\(s\) 'a' \(1 image\(s\)\) are not classes of the model"):
        evaluate(package, EvaluateRequest("imagefolder", str(kvasir)), tmp_path / "eval3")


@pytest.mark.e2e
def test_evaluate_matches_labels_by_name_and_accepts_a_subset_of_the_classes(run, tmp_path):
    """Class folders sort their names (here "Benign" before "normal", unlike the model's benign, malignant,
    normal) and another hospital's set may lack a class: labels must follow the names, and the report must
    say which class is missing."""
    from medsg.deploy.evaluate import EvaluateRequest, evaluate

    _, _, package, _ = run
    source = make_synthetic_busi(tmp_path / "src", n_per_class=3, size=40, seed=5)
    root = tmp_path / "ext"
    for src, dst in (("benign", "Benign"), ("normal", "normal")):
        (root / dst).mkdir(parents=True)
        for image in sorted((source / src).glob(f"{src} (*).png")):
            if not image.stem.endswith("_mask"):
                shutil.copyfile(image, root / dst / image.name)
    summary = evaluate(package, EvaluateRequest("imagefolder", str(root)), tmp_path / "eval")
    rows = np.asarray(summary["metrics"]["confusion_matrix"]).sum(axis=1)
    assert rows.tolist() == [3, 0, 3]  # benign, malignant (absent), normal: "normal" is not read as index 1
    assert summary["absent_classes"] == ["malignant"]
    assert "Classes with no test image: malignant" in (tmp_path / "eval" / "report.md").read_text()
    (root / "Benign" / "broken.png").write_bytes(b"not a png")  # scored images stay, the exit status says 1
    args = ["evaluate", str(package), "--adapter", "imagefolder", "--root", str(root)]
    assert cli.main([*args, "--out", str(tmp_path / "eval2")]) == 1
    assert json.loads((tmp_path / "eval2" / "evaluation.json").read_text())["n_skipped"] == 1


def _isic_layout(root: Path, subset: str, size: tuple[int, int], seed: int = 0) -> Path:
    from medsg.data.isic2018 import ISIC_CLASSES

    rng = np.random.default_rng(seed)
    inputs = root / f"ISIC2018_Task3_{subset}_Input"
    inputs.mkdir(parents=True)
    rows = ["image," + ",".join(ISIC_CLASSES)]
    for k in range(7):
        image_id = f"ISIC_{seed:02d}{k:05d}"
        pixels = np.clip(rng.normal(150, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(inputs / f"{image_id}.jpg", quality=95)
        rows.append(image_id + "," + ",".join("1.0" if c == k else "0.0" for c in range(7)))
    (root / f"ISIC2018_Task3_{subset}_GroundTruth.csv").write_text("\n".join(rows) + "\n")
    return root


def _isic_package(tmp_path: Path) -> Path:
    """A package of an untrained 7-class sgformer_tiny, with a reference made from 600x450 images."""
    from medsg.deploy.reference import write_reference

    pkg = tmp_path / "isic_pkg"
    train = _isic_layout(tmp_path / "train", "Training", (600, 450), seed=1)
    images = sorted((train / "ISIC2018_Task3_Training_Input").glob("*.jpg"))
    write_reference([p.stem for p in images], [str(p) for p in images], pkg)
    config = {
        "experiment": {"name": "isic"},
        "data": {"adapter": "isic2018", "root": str(train)},
        "model": {"name": "sgformer_tiny"},
        "eval": {"bootstrap": 10},
    }
    bare_package(pkg, [("0", "fold", 1.5)], config)
    assert (pkg / CHECKSUMS_FILE).is_file()
    return pkg


@pytest.mark.parametrize("subset", ["validation", "test"])
def test_evaluate_reaches_isic_layouts_at_600x450_and_pre_resized(tmp_path, subset):
    from medsg.deploy.evaluate import EvaluateRequest, evaluate

    pkg = _isic_package(tmp_path)
    folder = subset.capitalize()
    original = _isic_layout(tmp_path / "orig", folder, (600, 450), seed=2)
    resized = tmp_path / "small"
    shutil.copytree(original, resized)
    for path in (resized / f"ISIC2018_Task3_{folder}_Input").glob("*.jpg"):
        Image.open(path).resize((224, 168), Image.BICUBIC).save(path, quality=95)
    results = []
    for root in (original, resized):
        request = EvaluateRequest("isic2018", str(root), {"subset": subset})
        summary = evaluate(pkg, request, tmp_path / f"eval_{root.name}")
        assert summary["n_scored"] == 7 and summary["n_skipped"] == 0 and summary["overlap"]["n"] == 0
        assert summary["n_flagged"] == 0  # both sizes are within the training images' range
        frame = pd.read_csv(tmp_path / f"eval_{root.name}" / "predictions.csv")
        results.append(frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy())
    np.testing.assert_allclose(results[0], results[1], atol=0.05)


@pytest.mark.e2e
def test_predict_streams_rows_batch_by_batch(run, tmp_path, monkeypatch):
    from medsg.deploy import predict as predict_mod

    _, run_dir, package, _ = run
    written: list[tuple[int, int]] = []
    real_write = predict_mod.CsvStream.write

    def spy(self, rows):
        if self.path.name == "predictions.csv":
            on_disk = max(len(Path(self.tmp).read_text().splitlines()) - 1, 0)  # rows flushed, header aside
            written.append((len(rows), on_disk))
        real_write(self, rows)

    monkeypatch.setattr(predict_mod.CsvStream, "write", spy)
    items = [InputItem(f"i{k}", p) for k, p in enumerate(list(manifest(run_dir)["path"])[:5])]
    result = predict_items(load_package(package), items, tmp_path, PredictOptions(batch_size=2))
    assert written == [(2, 0), (2, 2), (1, 4)]  # each batch is written as it comes, nothing held back
    assert result.probs == [] and result.n_predicted == 5 and not list(tmp_path.glob(".predictions.csv.*"))


def test_a_fold_without_validation_keeps_temperature_1_and_says_so(tmp_path, make_config):
    from torch.utils.data import Dataset

    from medsg.train.kfold import run_folds
    from medsg.train.loader import FoldData

    class Noise(Dataset):
        def __init__(self, ids):
            self.ids = list(ids)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.ids[i])
            return {
                "image": torch.randn(3, 32, 32, generator=g),
                "label": self.ids[i] % 2,
                "id": str(self.ids[i]),
            }

    class Factory:
        class_names = ["a", "b"]

        def __call__(self, fold, model):
            return FoldData(Noise(range(12)), np.arange(12) % 2, None, Noise(range(12, 18)), self.class_names)

    no_validation = {
        "experiment.name": "nv",
        "experiment.output_dir": tmp_path,
        "data.cache": "memory",  # the schema's cache, warm-up and bootstrap
        "splits.inner_val_fraction": 0.0,
        "train.batch_size": 6,
        "train.warmup_epochs": 2,
        "train.selection": "last_epoch",
        "eval.bootstrap": 1000,
    }
    cfg = make_config(tmp_path, None, no_validation, check_paths=False)
    run_folds(cfg, [0], Factory(), tmp_path, quiet=True)
    record = json.loads((tmp_path / "fold_0" / "calibration.json").read_text())
    assert record["temperature"] == 1.0 and not record["fitted"]
    assert "no inner validation split" in record["reason"] and "uncalibrated" in record["reason"]
    assert not (tmp_path / "fold_0" / "val_predictions.csv").exists()
    raw_preds = pd.read_csv(tmp_path / "fold_0" / "predictions.csv")
    cal_preds = pd.read_csv(tmp_path / "fold_0" / "calibrated_predictions.csv")
    pd.testing.assert_frame_equal(raw_preds, cal_preds, atol=1e-12)


def test_safetensors_go_through_the_one_checkpoint_reader(tmp_path):
    from medsg.models.checkpoint import read_checkpoint, save_safetensors

    weights = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    path = save_safetensors(weights, tmp_path / "w.safetensors")
    back = read_checkpoint(path)
    assert set(back) == {"a", "b"} and torch.equal(back["a"], weights["a"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors.*not a readable safetensors file"):
        read_checkpoint(tmp_path / "bad.safetensors")


@pytest.mark.e2e
def test_a_float16_package_is_half_the_weights_and_predicts_as_the_run_does(run, tmp_path):
    """``--weights-dtype float16``: every floating tensor stored in half precision (integer buffers kept),
    recorded in package.json, loaded back into float32; probabilities move by rounding only."""
    from safetensors.torch import load_file

    _, run_dir, package, _ = run
    half = export_package(run_dir, tmp_path / "half", "folds", weights_dtype="float16")
    assert json.loads((half / PACKAGE_FILE).read_text())["weights_dtype"] == "float16"
    assert "stored in float16 and loaded into float32" in (half / "MODEL_CARD.md").read_text()
    assert "stored in" not in (package / "MODEL_CARD.md").read_text()
    assert json.loads((package / PACKAGE_FILE).read_text())["weights_dtype"] == "float32"
    full_w, half_w = (
        load_file(package / "weights" / "0.safetensors"),
        load_file(half / "weights" / "0.safetensors"),
    )
    assert full_w.keys() == half_w.keys()
    for key, value in half_w.items():
        assert value.dtype == (torch.float16 if full_w[key].is_floating_point() else full_w[key].dtype), key
    size = sum(p.stat().st_size for p in (half / "weights").glob("*.safetensors"))
    full = sum(p.stat().st_size for p in (package / "weights").glob("[01].safetensors"))
    assert size < 0.55 * full
    bundle, rows = load_package(half), manifest(run_dir)
    member = bundle.select("folds")[0]
    assert next(bundle.build(member).parameters()).dtype == torch.float32
    preds = pd.read_csv(run_dir / f"fold_{member.name}" / "predictions.csv", dtype={"id": str})
    got = member_raw_probs(bundle, member, list(rows.loc[preds["id"], "path"]))
    np.testing.assert_allclose(got, preds[[f"p_{c}" for c in bundle.class_names]].to_numpy(), atol=5e-3)
    with pytest.raises(DataError, match="weights dtype 'int8'"):
        export_package(run_dir, tmp_path / "bad", "folds", weights_dtype="int8")
    assert not (tmp_path / "bad").exists()


def test_fingerprints_store_digests_as_bytes_lzma_compressed_and_read_either_layout(tmp_path):
    """The compact layout (32-byte digests, LZMA members) reads back to the same fingerprints, and a file
    written before it (hex strings, deflated), as in packages committed earlier, still reads."""
    from medsg.deploy.reference import Fingerprints, fingerprint

    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    prints, problems = fingerprint(["a", "b", "c"], [str(p) for p in paths])
    assert not problems and len(prints.sha256[0]) == 64
    new, old = tmp_path / "new.npz", tmp_path / "old.npz"
    new.write_bytes(prints.to_bytes())
    np.savez_compressed(old, **{k: getattr(prints, k) for k in prints.__dataclass_fields__})
    with zipfile.ZipFile(new) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_LZMA}
    with np.load(new) as raw:
        assert raw["sha256"].shape == (3, 32) and raw["sha256"].dtype == np.uint8
    for path in (new, old):
        back = Fingerprints.load(path)
        for key in prints.__dataclass_fields__:
            np.testing.assert_array_equal(
                getattr(back, key), getattr(prints, key), err_msg=f"{path.name}: {key}"
            )
    prints.sha256[1] = ""  # an unreadable image's empty digest survives the round trip
    new.write_bytes(prints.to_bytes())
    assert list(Fingerprints.load(new).sha256) == list(prints.sha256)


def test_evaluate_reads_a_packages_cv_predictions_in_either_layout(tmp_path):
    """Packages exported before the xz copy keep a plain cv/oof_predictions.csv; the xz one wins if both."""
    from medsg.deploy.package import ModelBundle

    def _oof_path(bundle):
        return ModelBundle.oof_path(bundle)

    bundle = SimpleNamespace(kind="package", source=tmp_path)
    assert _oof_path(bundle) is None
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "oof_predictions.csv").write_text("id\n")
    assert _oof_path(bundle) == tmp_path / "cv" / "oof_predictions.csv"
    (tmp_path / "cv" / "oof_predictions.csv.xz").write_bytes(lzma.compress(b"id\n"))
    assert _oof_path(bundle) == tmp_path / "cv" / "oof_predictions.csv.xz"
    assert _oof_path(SimpleNamespace(kind="run", source=tmp_path)) is None


def test_a_folder_to_predict_is_read_as_the_imagefolder_adapter_reads_images(tmp_path, caplog):
    """DICOM without a suffix, GIF and JPEG 2000 are images there too; BUSI-style masks beside the scans and
    non-image files are left out and counted; a hidden folder above the given one hides nothing."""
    from dicomgen import write_dicom

    from medsg.deploy.predict import list_inputs

    root = tmp_path / ".cache" / "scans"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a (1).png")
    Image.new("L", (8, 8)).save(root / "a (1)_mask.png")
    Image.new("L", (8, 8)).save(root / "a (1)_mask_1.png")
    Image.new("RGB", (8, 8)).save(root / "sub" / "b.gif")
    write_dicom(root / "sub" / "IM0001", np.zeros((8, 8), dtype=np.uint16))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    with caplog.at_level("INFO", logger="medsg.data.generic"):  # the folder scan predict shares with pretrain
        items = list_inputs([root])
    assert [i.id for i in items] == ["a (1).png", "sub/IM0001", "sub/b.gif"]
    assert "2 lesion-mask file(s)" in caplog.text and "1 file(s) that are not images" in caplog.text
    named = list_inputs([root / "a (1)_mask.png"])  # a mask named on its own is read
    assert [i.id for i in named] == ["a (1)_mask.png"]


def test_an_output_folder_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(tmp_path / "no-model"), "x.png", "--out", str(afile)])
    assert stop.value.code == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_csv_listing_to_predict_is_read_as_the_csv_adapter_reads_tables(tmp_path):
    """European Excel writes ';' and a byte-order mark; relative paths are the CSV's folder's; 'id' is optional
    per row; a listing without 'path' is refused by name."""
    from medsg.deploy.predict import list_inputs

    (tmp_path / "imgs").mkdir()
    listing = tmp_path / "list.csv"
    listing.write_text("\ufeffpath;id\r\nimgs/a.png;case 1\r\nimgs/b.png;\r\n", encoding="utf-8")
    items = list_inputs([listing])
    assert [(i.id, i.path) for i in items] == [
        ("case 1", str(tmp_path / "imgs" / "a.png")),
        ("imgs/b.png", str(tmp_path / "imgs" / "b.png")),
    ]
    listing.write_text("file,id\na.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="needs a 'path' column"):
        list_inputs([listing])
    listing.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"the CSV is empty; expected a header line with columns \['path'\]"):
        list_inputs([listing])


def test_a_new_predict_removes_the_partial_files_a_killed_one_left(tmp_path):
    import subprocess
    import sys

    from medsg.core.io import HOST as _HOST
    from medsg.deploy.predict import CsvStream

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".predictions.csv.{_HOST}.{int(dead.stdout)}.abc123.tmp"
    alive = tmp_path / f".predictions.csv.{_HOST}.{os.getppid()}.def456.tmp"  # a predict still writing
    elsewhere = tmp_path / f".predictions.csv.another-host.{int(dead.stdout)}.x.tmp"  # a shared folder
    other = tmp_path / f".skipped.csv.{_HOST}.{int(dead.stdout)}.x.tmp"
    for path in (stale, alive, elsewhere, other):
        path.write_text("partial")
    with CsvStream(tmp_path / "predictions.csv", ["id"]) as out:
        out.write([{"id": "a"}])
    assert not stale.exists() and alive.exists() and elsewhere.exists() and other.exists()
    assert (tmp_path / "predictions.csv").read_text().splitlines() == ["id", "a"]
    assert sorted(tmp_path.glob(f".predictions.csv.{_HOST}.*.tmp")) == [alive]  # its own became the CSV


@pytest.mark.e2e
def test_supervised_transfer_from_a_model_of_the_same_images_is_refused(run, tmp_path):
    """A final model saw every image's label, and each is an outer test image of some fold. Images are
    compared by content: another dataset that names its files the same way is not refused."""
    from medsg.core.errors import ConfigError
    from medsg.train.model import check_transfer_source

    _, run_dir, package, _ = run
    paths = list(manifest(run_dir)["path"])
    renamed = tmp_path / "renamed.png"  # the same file under another name and folder: still the same image
    shutil.copyfile(paths[0], renamed)
    others = make_synthetic_busi(
        tmp_path / "other", n_per_class=4, size=40, seed=99
    )  # same names, new pixels
    other_paths = [str(p) for p in sorted(others.rglob("*).png"))]
    for source in (run_dir, package):
        with pytest.raises(ConfigError, match=r"was trained on 1 image\(s\) of this experiment"):
            check_transfer_source(source, [str(renamed), *other_paths])
        check_transfer_source(source, other_paths)


@pytest.mark.e2e
def test_a_checkpoint_file_inside_a_run_folder_is_checked_as_the_run_folder(run, tmp_path, make_config):
    """model.pretrained may name one checkpoint of a run (fold_0/checkpoint_best.pt) instead of its folder: the
    same model, so the same leakage check, before any fold trains; a run whose images are gone cannot be
    checked and is refused, pointing at the package (its fingerprints need no images)."""
    from medsg.core.errors import ConfigError

    cfg, run_dir, package, _ = run
    for name, weights in (
        ("leak", run_dir / "fold_0" / "checkpoint_best.pt"),
        (
            "leak_pkg",
            sorted((package / "weights").glob("*.safetensors"))[0],
        ),  # a package's file: its fingerprints
    ):
        leak = {"experiment.name": name, "model.pretrained": str(weights)}
        leaking = make_config(cfg.data.root, tmp_path, PKG | leak, model="sgformer_tiny")
        with pytest.raises(ConfigError, match=r"was trained on \d+ image\(s\) of this experiment"):
            run_experiment(leaking, folds=[0], quiet=True)
        assert not (leaking.run_dir / "fold_0").exists()
    moved = shutil.copytree(run_dir, tmp_path / "moved_run")
    table = pd.read_csv(moved / "manifest.csv", dtype=str, keep_default_na=False)
    table["path"] = [str(tmp_path / "gone" / Path(p).name) for p in table["path"]]
    table.to_csv(moved / "manifest.csv", index=False)
    from medsg.train.model import check_transfer_source

    with pytest.raises(ConfigError, match=r"none of the \d+ images .* is readable here.*medsg export"):
        check_transfer_source(moved, list(manifest(run_dir)["path"]))
    with pytest.raises(ConfigError, match=r"name its weights file in the package"):
        check_transfer_source(moved, list(manifest(run_dir)["path"]), weights_file=True)


@pytest.mark.e2e
def test_export_refuses_a_summary_of_other_predictions(run, tmp_path):
    """A report killed between its two files (or edited by hand) would ship a cv/ whose summary describes
    other predictions; export refuses it, naming both files and the fix."""
    _, run_dir, _, _ = run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    oof = copy / "oof_predictions.csv"
    oof.write_text("".join(oof.read_text().splitlines(keepends=True)[:-2]))  # an older, partial report
    with pytest.raises(DataError, match=r"summary\.json pools \d+ images but .*oof_predictions\.csv holds"):
        export_package(copy, tmp_path / "package", "folds")
    assert not (tmp_path / "package").exists()
