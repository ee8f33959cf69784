"""The whole runner on synthetic BUSI (32 px, tiny timm model): run folder, report, selection hygiene, locks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import medsg.train.fold as fold_mod
from medsg.core.errors import ConfigError, RunLocked
from medsg.demo import demo_config, make_synthetic_busi
from medsg.workflows.experiment import run_experiment, write_run_report


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory) -> Path:
    root = make_synthetic_busi(tmp_path_factory.mktemp("data"), n_per_class=6, size=32, seed=1)
    # Like real BUSI, some images have several masks (_mask_1.png): records must still collate.
    shutil.copy(root / "benign" / "benign (1)_mask.png", root / "benign" / "benign (1)_mask_1.png")
    return root


@pytest.fixture(scope="module")
def syn_config(make_config):
    """``make_config`` for this module's runs: 2 epochs at lr 1e-3, the split file under ``out/splits``."""

    def build(root: Path, out: Path, *overrides: dict):
        syn = {
            "experiment.name": "syn",
            "experiment.seed": 0,
            "splits.seed": 0,
            "splits.file": out / "splits" / "busi_2fold_seed0.json",
            "train.epochs": 2,
            "train.lr": 1e-3,
        }
        return make_config(root, out, syn, *overrides)

    return build


@pytest.mark.e2e
def test_full_run_writes_run_folder_and_report_and_never_selects_on_test(
    busi_root, tmp_path, monkeypatch, syn_config
):
    evaluated: list[list[str]] = []
    real_predict = fold_mod.predict

    def recording_predict(model, dataset, *args, **kwargs):
        out = real_predict(model, dataset, *args, **kwargs)
        evaluated.append(out[0])
        return out

    monkeypatch.setattr(fold_mod, "predict", recording_predict)
    cfg = syn_config(busi_root, tmp_path)
    run_dir = run_experiment(cfg, quiet=True)

    for name in (
        "config.yaml",
        "splits.json",
        "manifest.csv",
        "audit.json",
        "summary.json",
        "oof_predictions.csv",
    ):
        assert (run_dir / name).is_file(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["selection"] == "inner_val" and saved["experiment"]["seed"] == 0
    assert {"torch", "timm", "medsg", "git"} <= set(saved["provenance"])
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "report.md").is_file()
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    assert len(oof) == 18 and sorted(oof["fold"].unique()) == [0, 1]

    # Per fold: 2 validation passes (one per epoch) on the inner val ids, then exactly one pass on the test fold.
    assert len(evaluated) == 2 * 3
    for fold in (0, 1):
        ids = json.loads((run_dir / f"fold_{fold}" / "inner_split.json").read_text())
        test, val, train = set(ids["test"]), set(ids["val"]), set(ids["train"])
        assert val and not (test & val) and not (test & train) and not (train & val)
        calls = evaluated[3 * fold : 3 * fold + 3]
        assert [set(c) for c in calls[:2]] == [val, val]  # selection saw only inner validation images
        assert set(calls[2]) == test
        metrics = json.loads((run_dir / f"fold_{fold}" / "metrics.json").read_text())
        assert metrics["n_test"] == len(test) and "inner-validation" in metrics["selection"]
    splits = json.loads((run_dir / "splits.json").read_text())
    assert sorted(i for f in splits["folds"] for i in f["val"]) == sorted(oof["id"])
    assert splits["header"]["grouping_description"].startswith("duplicate clusters from the audit")
    protocol = json.loads((run_dir / "protocol.json").read_text())
    assert protocol["audit"] == {"conflicts": "drop", "near_dup_threshold": 40, "min_correlation": 0.95}
    assert protocol["n_dropped"] == len(protocol["dropped_ids"]) == protocol["n_images_listed"] - len(oof)
    assert protocol["grouping"] == "group" and protocol["split_file"] == str(Path(cfg.split_file).resolve())

    # Re-running skips the finished folds; a changed result-affecting key is refused with the key named.
    # The run keeps its own splits.json: the shared split file is not needed (nor recreated) to resume.
    monkeypatch.setattr(fold_mod.FoldTrainer, "run", lambda self: pytest.fail("finished fold re-trained"))
    Path(cfg.split_file).unlink()
    run_experiment(syn_config(busi_root, tmp_path, {"train.workers": 1}), quiet=True)
    assert not Path(cfg.split_file).exists()
    with pytest.raises(
        ConfigError, match=r"different config \(train\.lr: 0\.001 -> 0\.01\).*new experiment\.name"
    ):
        run_experiment(syn_config(busi_root, tmp_path, {"train.lr": 0.01}), quiet=True)

    # `medsg report RUN_DIR --out` aggregates again into another folder.
    html = write_run_report(run_dir, tmp_path / "again")
    assert html.is_file() and html.parent == tmp_path / "again"


def test_new_split_file_is_announced_with_its_absolute_path_and_described(
    busi_root, tmp_path, monkeypatch, caplog, syn_config
):
    from medsg.data.splits import read_splits
    from medsg.workflows.prepare import prepare_data

    monkeypatch.chdir(tmp_path)  # the default split file is relative: it follows the working directory
    cfg = syn_config(busi_root, tmp_path)
    cfg.splits.file = None
    path = (tmp_path / "data_splits" / "busi_2fold_seed0.json").resolve()
    with caplog.at_level("INFO", logger="medsg.workflows.prepare"):
        prepare_data(cfg)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "NEW split" in r.message
    ]
    assert len(warnings) == 1 and str(path) in warnings[0]
    assert "data_splits/" in warnings[0] and "repository root" in warnings[0] and "splits.file" in warnings[0]
    header, _ = read_splits(path)
    assert header["grouping"] == "group"
    assert header["grouping_description"].startswith("duplicate clusters from the audit")
    assert "dHash-256 distance <= 40 and thumbnail correlation >= 0.95" in header["grouping_description"]

    caplog.clear()  # reusing the file says nothing; a planned new file (medsg splits, demo) is only INFO
    with caplog.at_level("INFO", logger="medsg.workflows.prepare"):
        prepare_data(cfg)
        path.unlink()
        prepare_data(cfg, new_split_expected=True)
    news = [r for r in caplog.records if "NEW split" in r.getMessage()]
    assert [r.levelname for r in news] == ["INFO"]


def test_csv_patient_grouping_keeps_a_duplicate_filed_under_another_patient_in_one_fold(tmp_path, syn_config):
    import numpy as np
    from PIL import Image

    from medsg.workflows.prepare import prepare_data

    rng = np.random.default_rng(0)
    rows = ["path,label,patient_id"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},P{i}")
    (tmp_path / "copy.png").write_bytes((tmp_path / "0.png").read_bytes())
    rows.append("copy.png,a,P99")  # the same scan filed under another patient id
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    cfg = syn_config(
        tmp_path / "list.csv", tmp_path, {"data.adapter": "csv", "splits.grouping": "patient_id"}
    )
    data = prepare_data(cfg)
    fold_of = {i: n for n, fold in enumerate(data.splits) for i in fold["val"]}
    ids = dict(zip(data.manifest["path"].map(lambda p: Path(p).name), data.manifest["id"], strict=True))
    assert len(fold_of) == 13 and fold_of[ids["copy.png"]] == fold_of[ids["0.png"]]


def test_grouping_descriptions(tmp_path, syn_config):
    def describe(adapter: str, *overrides: dict) -> str:
        from medsg.workflows.prepare import grouping_description

        cfg = syn_config(tmp_path, tmp_path, {"data.adapter": adapter}, *overrides)
        return grouping_description(cfg)

    assert describe("isic2018").startswith("lesion_id merged with duplicate clusters from the audit")
    assert "<= 12 and thumbnail correlation >= 0.9)" in describe(
        "busi", {"data.audit.near_dup_threshold": 12, "data.audit.min_correlation": 0.9}
    )
    assert describe("csv", {"splits.grouping": "patient"}).startswith(
        "column 'patient' merged with duplicate clusters from the audit"
    )


@pytest.mark.e2e
def test_single_fold_jobs_then_report(busi_root, tmp_path, syn_config):
    cfg = syn_config(busi_root, tmp_path, {"train.epochs": 1, "train.selection": "last_epoch"})
    run_dir = run_experiment(cfg, folds=[1], quiet=True)
    assert (run_dir / "fold_1" / "DONE").exists() and not (run_dir / "fold_0").exists()
    assert not (run_dir / "summary.json").exists()  # not every fold is done: no report yet
    assert Path(cfg.split_file).is_file()  # the shared split file was created once, for all jobs
    with pytest.raises(ConfigError, match="splits.k is 2"):
        run_experiment(cfg, folds=[2], quiet=True)
    run_experiment(cfg, folds=[0], quiet=True)
    assert (run_dir / "summary.json").exists() and (tmp_path / "report" / "report.html").exists()


@pytest.mark.e2e
def test_live_lock_is_refused_and_stale_lock_taken_over(busi_root, tmp_path, caplog, syn_config):
    cfg = syn_config(busi_root, tmp_path, {"train.epochs": 1, "train.selection": "last_epoch"})
    lock = cfg.run_dir / "fold_0" / ".lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{os.getpid()} {socket.gethostname()}")  # this live process holds it
    with pytest.raises(RunLocked, match=r"in use by pid \d+ .*lock file"):
        run_experiment(cfg, quiet=True)
    assert not (cfg.run_dir / "fold_1" / "DONE").exists()  # refused before any training
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid} {socket.gethostname()}")
    run_experiment(cfg, quiet=True)
    assert "stale lock" in caplog.text
    assert (cfg.run_dir / "fold_0" / "DONE").exists() and not lock.exists()


def test_demo_config_points_at_its_folder(tmp_path):
    cfg = demo_config(tmp_path, quick=True)
    assert cfg.model.name == "sgformer_tiny" and cfg.splits.k == 2 and cfg.train.epochs == 1
    assert Path(cfg.data.root) == (tmp_path / "data").resolve()
    assert Path(cfg.split_file).parent == (tmp_path / "data_splits").resolve()
    assert cfg.run_dir.parent == (tmp_path / "runs").resolve()


@pytest.mark.e2e
@pytest.mark.parametrize("cache", ["none", "memory"])
def test_resume_with_random_monai_augmentations_is_exact(
    busi_root, tmp_path, cache, syn_config, interrupt_after_first_epoch
):
    """Kill after epoch 1 (data pipeline with random flips/rotations/zoom), resume: same numbers as one go."""
    cached = {"data.cache": cache}
    full = run_experiment(
        syn_config(busi_root, tmp_path / "a", {"splits.k": 2}, cached), folds=[0], quiet=True
    )
    cfg_b = syn_config(busi_root, tmp_path / "b", cached)
    interrupt_after_first_epoch(lambda: run_experiment(cfg_b, folds=[0], quiet=True))
    resumed = run_experiment(syn_config(busi_root, tmp_path / "b", cached), folds=[0], quiet=True)
    a = json.loads((full / "fold_0" / "metrics.json").read_text())
    b = json.loads((resumed / "fold_0" / "metrics.json").read_text())
    assert a == b and a["epochs_trained"] == 2
    pd.testing.assert_frame_equal(
        pd.read_csv(full / "fold_0" / "predictions.csv"), pd.read_csv(resumed / "fold_0" / "predictions.csv")
    )


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_each_image_is_decoded_once_per_run_not_once_per_fold(
    busi_root, tmp_path, monkeypatch, cache, syn_config
):
    """Two folds' train/val/test sets read one run-wide cache; disk also serves a new process (resume)."""
    import torch

    from medsg.data import images
    from medsg.data.dataset import manifest_to_records
    from medsg.train.model import build_model
    from medsg.workflows.prepare import ManifestFolds, prepare_data

    reads: list[str] = []
    real_read = images.read_image

    def counting_read(path):
        reads.append(str(path))
        return real_read(path)

    monkeypatch.setattr(images, "read_image", counting_read)
    cfg = syn_config(busi_root, tmp_path, {"data.cache": cache})
    data = prepare_data(cfg)
    model = build_model(cfg, len(data.class_names))

    def read_all_folds(factory: ManifestFolds) -> dict[str, torch.Tensor]:
        images = {}
        for fold in (0, 1):
            parts = factory(fold, model)
            for part in (parts.train, parts.val, parts.test):
                for i in range(len(part)):
                    item = part[i]
                    images.setdefault(f"{fold}/{item['id']}/{part is parts.train}", item["image"])
        return images

    images = read_all_folds(ManifestFolds(cfg, data, cfg.run_dir))
    n = len(data.manifest)
    assert len(images) == 2 * n  # every image was used in both folds ...
    assert sorted(reads) == sorted(data.manifest["path"])  # ... but decoded once

    # A new factory is a new process (a resume after kill -9): the disk cache already holds every image.
    reads.clear()
    factory = ManifestFolds(cfg, data, cfg.run_dir)
    test_part = factory(0, model).test
    item = test_part[0]
    assert len(reads) == (0 if cache == "disk" else n)

    # The shared cache changes nothing: a test sample equals the full eval pipeline applied to its file.
    record = next(r for r in manifest_to_records(data.manifest, with_masks=False) if r["id"] == item["id"])
    expected = factory._pipelines(model)[False](record)["image"]
    torch.testing.assert_close(torch.as_tensor(item["image"]), torch.as_tensor(expected))


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.mark.slow
def test_real_busi_one_fold_with_the_canonical_split(tmp_path):
    """Real BUSI (../shared), canonical split file, conflict pair dropped: one fold, one epoch (minutes on CPU)."""
    root = SHARED / "data" / "busi"
    if not root.is_dir():
        pytest.skip(f"real BUSI not found at {root}")
    from medsg.config import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        repo / "experiments" / "busi_cpu.yaml",
        [
            f"data.root={root}",
            f"splits.file={repo / 'data_splits' / 'busi_5fold_seed0.json'}",
            f"experiment.output_dir={tmp_path / 'runs'}",
            f"experiment.report_dir={tmp_path / 'report'}",
            "train.epochs=1",
        ],
    )
    run_dir = run_experiment(cfg, folds=[0], quiet=True)
    ids = json.loads((run_dir / "fold_0" / "inner_split.json").read_text())
    assert (
        "benign (433)" not in ids["test"] + ids["train"] + ids["val"]
    )  # the cross-class conflict is dropped
    metrics = json.loads((run_dir / "fold_0" / "metrics.json").read_text())
    assert metrics["n_test"] == len(ids["test"]) > 150


def test_failed_start_can_be_restarted_with_a_corrected_config(busi_root, tmp_path, syn_config):
    from medsg.workflows.experiment import save_or_check_config
    from medsg.workflows.prepare import prepare_data

    bad = syn_config(busi_root, tmp_path, {"splits.grouping": "patient"})
    with pytest.raises(ConfigError, match="splits.grouping: column 'patient' is not in the manifest"):
        run_experiment(bad, quiet=True)
    run_dir = bad.run_dir.resolve()
    assert (run_dir / "config.yaml").is_file()  # the failed start left its config behind
    (run_dir / "splits.json").write_text("{}")  # and, say, a derived file from another attempt

    good = syn_config(busi_root, tmp_path)
    save_or_check_config(good, run_dir)  # no fold trained: the corrected config replaces the old one
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["splits"]["grouping"] == "group"
    assert not (run_dir / "splits.json").exists()  # never reused under the new config

    prepare_data(good, run_dir)
    first = json.loads((run_dir / "protocol.json").read_text())
    assert (
        first["split_file"] == str(Path(good.split_file).resolve()) and "split_file_copied_from" not in first
    )
    prepare_data(good, run_dir)  # a resume reads the run's own copy, and protocol.json says so
    resumed = json.loads((run_dir / "protocol.json").read_text())
    assert resumed["split_file"] == str(run_dir / "splits.json")
    assert resumed["split_file_copied_from"] == str(good.split_file)

    (run_dir / "fold_0").mkdir(exist_ok=True)
    (run_dir / "fold_0" / "checkpoint_last.pt").write_bytes(b"")  # a fold has trained: the config is fixed
    with pytest.raises(ConfigError, match=r"different config \(train\.lr: 0\.001 -> 0\.01\) and has trained"):
        save_or_check_config(syn_config(busi_root, tmp_path, {"train.lr": 0.01}), run_dir)


def test_a_trained_run_refuses_to_resume_on_changed_images_and_keeps_its_record(tmp_path, syn_config):
    """Folds trained on one image set cannot be resumed on another: the split file's own hash check only warns
    (it may be used on other data), but a run's trained folds fix what they saw."""
    from PIL import Image

    from medsg.core.errors import DataError
    from medsg.workflows.prepare import prepare_data

    root = make_synthetic_busi(tmp_path / "data", n_per_class=6, size=32, seed=1)
    cfg = syn_config(root, tmp_path)
    run_dir = cfg.run_dir.resolve()
    prepare_data(cfg, run_dir, new_split_expected=True)
    record = (run_dir / "audit.json").read_bytes()
    image = root / "benign" / "benign (2).png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)  # same id, other pixels
    prepare_data(cfg, run_dir)  # no fold has trained yet: the run may start again on the new images
    assert (run_dir / "audit.json").read_bytes() != record
    record = (run_dir / "audit.json").read_bytes()

    (run_dir / "fold_0").mkdir()
    (run_dir / "fold_0" / "checkpoint_last.pt").write_bytes(b"")  # now a fold has trained on them
    Image.new("RGB", (32, 32), (10, 200, 10)).save(image)
    with pytest.raises(DataError, match=r"has trained folds, and the data they trained on .* has changed"):
        prepare_data(cfg, run_dir)
    assert (run_dir / "audit.json").read_bytes() == record  # the record of what the folds saw is kept


def test_a_run_takes_report_settings_from_the_current_config_and_keeps_the_rest(
    busi_root, tmp_path, syn_config
):
    from medsg.workflows.experiment import save_or_check_config

    first = syn_config(busi_root, tmp_path)
    run_dir = first.run_dir.resolve()
    run_dir.mkdir(parents=True)
    saved = save_or_check_config(first, run_dir)
    (run_dir / "fold_0").mkdir()
    (run_dir / "fold_0" / "checkpoint_last.pt").write_bytes(b"")  # a fold has trained
    later = syn_config(busi_root, tmp_path, {"eval.decision": "prior", "explain.cases_per_fold": 3})
    updated = save_or_check_config(later, run_dir)
    on_disk = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert on_disk == updated
    assert updated["eval"]["decision"] == "prior" and updated["explain"]["cases_per_fold"] == 3
    assert updated["provenance"] == saved["provenance"] and updated["train"] == saved["train"]


def test_prepare_refuses_one_class_data_before_writing_a_split_file(tmp_path, make_config):
    """The checks are wired into the run: a single class is named, and no split file is left to delete."""
    from PIL import Image

    from medsg.core.errors import DataError
    from medsg.workflows.prepare import prepare_data

    for i in range(4):
        (tmp_path / "data" / "benign").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / "benign" / f"{i}.png")
    cfg = make_config(tmp_path / "data", tmp_path, {"data.adapter": "imagefolder"})
    with pytest.raises(DataError, match=r"1 class\(es\) \['benign'\]; a classifier needs at least 2"):
        prepare_data(cfg, new_split_expected=True)
    assert not (tmp_path / "splits.json").exists()


def test_a_run_refuses_a_weights_file_of_nothing_it_knows_before_any_fold(busi_root, tmp_path, make_config):
    """The weights check is wired into the run, once, before the first fold (timm alone would train from
    random weights)."""
    import torch

    from medsg.core.errors import ConfigError

    path = tmp_path / "w.pth"
    torch.save({"foo": torch.zeros(3)}, path)
    cfg = make_config(busi_root, tmp_path, {"model.pretrained": path}, model="sgformer_tiny")
    with pytest.raises(ConfigError, match=r"names 0 of the \d+ backbone entries of sgformer_tiny"):
        run_experiment(cfg, quiet=True)
    assert not list((tmp_path / "runs").rglob("fold_*"))
