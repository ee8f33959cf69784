"""Transfer into a new task: `medsg pretrain` (BYOL) and model.pretrained naming a medsg package or backbone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import bare_package

from medsg.config import config_from_dict, resolved_config
from medsg.core.errors import ConfigError
from medsg.data.splits import save_splits
from medsg.models.checkpoint import read_checkpoint
from medsg.report.protocol import pretraining_text
from medsg.train.model import build_model
from medsg.workflows.pretrain import (
    BACKBONE_FILE,
    PretrainSettings,
    TwoViews,
    fold_training_images,
    pretrain,
    pretraining_source,
    unlabelled_images,
)

REPO = Path(__file__).resolve().parents[1]
TINY = PretrainSettings(epochs=2, batch_size=4, projection_hidden=64, projection_dim=32, warmup_epochs=1)
SMALL_CNN = PretrainSettings(  # a CNN small enough for one quick epoch
    model="mobilenetv3_small_050",
    img_size=64,
    epochs=1,
    batch_size=4,
    projection_hidden=32,
    projection_dim=16,
)


@pytest.fixture
def isic_package(tmp_path: Path) -> Path:
    """A 7-class sgformer_tiny package with a final model (untrained, seeded): the transfer source."""
    config = {
        "experiment": {"name": "isic"},
        "data": {"adapter": "isic2018", "root": str(tmp_path)},
        "model": {"name": "sgformer_tiny"},
    }
    return bare_package(tmp_path / "isic_pkg", [("all", "all", 1.0)], config)


def transfer_from(source: Path) -> dict:
    """``make_config`` overrides: ``model.pretrained`` names ``source``, no stochastic depth."""
    return {"model.pretrained": str(source), "model.drop_path": 0.0}


def test_supervised_transfer_takes_the_final_models_backbone_and_a_new_head(
    tmp_path, make_config, isic_package
):
    cfg = make_config(tmp_path, None, transfer_from(isic_package), model="sgformer_tiny", check_paths=False)
    model = build_model(cfg, num_classes=3)
    source = read_checkpoint(isic_package / "weights" / "all.safetensors")
    state = model.state_dict()
    backbone = [k for k in source if not k.startswith("head.")]
    assert len(backbone) > 50
    assert all(torch.equal(state[k], source[k]) for k in backbone)
    assert state["head.weight"].shape[0] == 3 and source["head.weight"].shape[0] == 7
    # the head is new even when the class counts agree
    seven = build_model(cfg, num_classes=7).state_dict()
    assert not torch.equal(seven["head.weight"], source["head.weight"])
    # config.yaml keeps the path as written, like data.root
    given = config_from_dict(
        {**resolved_config(cfg), "model": {"name": "sgformer_tiny", "pretrained": "reports/x/model"}},
        check_paths=False,
    )
    assert resolved_config(given)["model"]["pretrained"] == "reports/x/model"


def test_supervised_transfer_refuses_another_architecture(tmp_path, make_config, isic_package):
    cfg = make_config(
        tmp_path, None, transfer_from(isic_package), model="mobilenetv3_small_050", check_paths=False
    )
    with pytest.raises(ConfigError, match="holds a sgformer_tiny model, model.name is mobilenetv3_small_050"):
        build_model(cfg, num_classes=3)


def _images(folder: Path, n: int = 9) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = (rng.random((64 + 8 * i, 80, 3)) * 255).astype(np.uint8)
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(sub / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.e2e
def test_pretrain_resumes_after_a_crash_to_the_same_backbone(tmp_path, monkeypatch):
    items = unlabelled_images(folder=_images(tmp_path / "images"))
    assert [i.id for i in items] == sorted(f"{'a' if k % 2 else 'b'}/img{k}.png" for k in range(9))
    whole = pretrain(items, tmp_path / "whole", TINY, device="cpu")
    history = json.loads((tmp_path / "whole" / "pretrain.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)

    # a crash in the second epoch (as kill -9 would leave it: epoch 1 saved, epoch 2 lost)
    calls = {"n": 0}
    original = TwoViews.__getitem__

    def crash_in_epoch_two(self, index):
        calls["n"] += 1
        if calls["n"] > 8 + 3:  # 2 batches of 4 per epoch
            raise RuntimeError("killed")
        return original(self, index)

    monkeypatch.setattr(TwoViews, "__getitem__", crash_in_epoch_two)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain(items, tmp_path / "resumed", TINY, device="cpu")
    assert not (tmp_path / "resumed" / "DONE").exists()
    monkeypatch.setattr(TwoViews, "__getitem__", original)
    resumed = pretrain(items, tmp_path / "resumed", TINY, device="cpu")
    a, b = read_checkpoint(whole), read_checkpoint(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("head.") for k in a)

    # other settings in the same folder are refused, not mixed
    with pytest.raises(ConfigError, match="other settings"):
        pretrain(items, tmp_path / "resumed", PretrainSettings(epochs=3, batch_size=4), device="cpu")


@pytest.mark.e2e
def test_a_pretrained_backbone_loads_as_model_pretrained_and_guards_against_leakage(tmp_path, make_config):
    items = unlabelled_images(folder=_images(tmp_path / "images"))
    settings = PretrainSettings(epochs=1, batch_size=4, projection_hidden=64, projection_dim=32)
    backbone = pretrain(items, tmp_path / "ssl", settings, source={"folder": "images"}, device="cpu")
    assert backbone.name == BACKBONE_FILE
    cfg = make_config(tmp_path, None, transfer_from(backbone), model="sgformer_tiny", check_paths=False)
    model = build_model(cfg, num_classes=3)
    weights = read_checkpoint(backbone)
    state = model.state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)

    record = pretraining_source(backbone, "busi", ["other.png"])
    assert record["images"]["n"] == 9 and record["epochs"] == 1
    assert "self-supervised" in pretraining_text(str(backbone), {"pretraining": record})
    with pytest.raises(ConfigError, match="pretrained on 1 images of this experiment"):
        pretraining_source(backbone, "imagefolder", ["a/img1.png", "other.png"])
    assert pretraining_source(tmp_path / "plain.pth", "busi", ["a/img1.png"]) is None


@pytest.mark.e2e
def test_pretrain_takes_a_cnn_whose_features_pass_a_pre_logits_layer(tmp_path, make_config):
    """mobilenetv3's headless output is its 1024-wide conv_head, not its 576 num_features: BYOL's projection
    reads what the backbone returns, and the backbone then loads as model.pretrained."""
    items = unlabelled_images(folder=_images(tmp_path / "images"))
    settings = SMALL_CNN
    backbone = pretrain(items, tmp_path / "ssl", settings, device="cpu")
    weights = read_checkpoint(backbone)
    assert "conv_head.weight" in weights
    cfg = make_config(
        tmp_path, None, transfer_from(backbone), model="mobilenetv3_small_050", check_paths=False
    )
    state = build_model(cfg, num_classes=3).state_dict()
    assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_pretrain_says_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="either --adapter"):
        unlabelled_images()
    with pytest.raises(Exception, match="no images found"):
        unlabelled_images(folder=tmp_path)


def test_a_kill_between_the_checkpoint_and_pretrain_json_keeps_every_history_row(tmp_path, monkeypatch):
    import medsg.workflows.pretrain as pretrain_mod

    items = unlabelled_images(folder=_images(tmp_path / "images"))
    out = tmp_path / "ssl"
    real_write = pretrain_mod.atomic_write_text

    def killed_after_the_checkpoint(path, text):
        if Path(path).name == "pretrain.json" and (out / "checkpoint_last.pt").is_file():
            raise KeyboardInterrupt  # epoch 1's resume point is saved, its history row not yet
        return real_write(path, text)

    monkeypatch.setattr(pretrain_mod, "atomic_write_text", killed_after_the_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        pretrain(items, out, TINY, device="cpu")
    assert json.loads((out / "pretrain.json").read_text())["history"] == []
    monkeypatch.undo()
    pretrain(items, out, TINY, device="cpu")
    history = json.loads((out / "pretrain.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert (out / "history.csv").read_text().count("\n") == 3  # header and both epochs


def test_a_folder_is_read_as_predict_reads_it_without_lesion_masks(tmp_path, caplog):
    """Pretraining on BUSI's layout must not learn from its masks (white blobs on black) as if they were scans."""
    folder = _images(tmp_path / "images", n=3)
    mask = Image.fromarray(np.zeros((16, 16), dtype=np.uint8))
    mask.save(folder / "a" / "img1_mask.png")
    mask.save(folder / "b" / "img0_mask_1.png")
    (folder / ".thumbs").mkdir()
    mask.save(folder / ".thumbs" / "img9.png")
    items = unlabelled_images(folder=folder)
    assert [i.id for i in items] == ["a/img1.png", "b/img0.png", "b/img2.png"]
    assert "2 lesion-mask file(s)" in caplog.text


def test_per_fold_pretraining_sees_only_that_folds_training_images(tmp_path, capsys):
    from medsg import cli

    items = unlabelled_images(folder=_images(tmp_path / "images", n=6))
    ids = [i.id for i in items]
    folds = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2] + ids[4:], "val": ids[2:4]}]
    split = save_splits(tmp_path / "split.json", {"dataset": "imagefolder"}, folds)
    kept, record = fold_training_images(items, split, 1, "imagefolder")
    assert [i.id for i in kept] == ids[:2] + ids[4:]  # fold 1's outer test images are left out
    assert record["fold"] == 1 and len(record["split_sha256"]) == 64
    every, _ = fold_training_images(items, split, "all", "imagefolder")
    assert [i.id for i in every] == ids
    with pytest.raises(ConfigError, match="give --adapter imagefolder"):
        fold_training_images(items, split, 0, "busi")
    with pytest.raises(ConfigError, match="folds 0 to 1"):
        fold_training_images(items, split, 2, "imagefolder")
    assert (
        cli.main(["pretrain", "--folder", str(tmp_path), "--split", str(split), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "--split and --fold go together" in capsys.readouterr().err


@pytest.mark.e2e
def test_pretrain_continues_from_an_init_backbone_and_resumes_only_with_it(tmp_path, monkeypatch):
    """Hierarchical pretraining: the second stage's online (and target) backbone starts as the first's result."""
    import medsg.workflows.pretrain as pretrain_mod

    settings = SMALL_CNN
    items = unlabelled_images(folder=_images(tmp_path / "images"))
    first = pretrain(items, tmp_path / "first", settings, device="cpu")
    started = {}

    class Capturing(pretrain_mod.BYOL):
        def __init__(self, backbone, *args):
            started.update({k: v.clone() for k, v in backbone.state_dict().items()})
            super().__init__(backbone, *args)

    monkeypatch.setattr(pretrain_mod, "BYOL", Capturing)
    second = tmp_path / "second"
    pretrain(items[:5], second, settings, device="cpu", init=first)
    weights = read_checkpoint(first)
    assert weights.keys() <= started.keys() and all(torch.equal(started[k], weights[k]) for k in weights)
    assert json.loads((second / "pretrain.json").read_text())["init"]["weights"] == str(first)

    with pytest.raises(ConfigError, match="other init"):  # the same folder from random weights: refused
        pretrain(items[:5], second, settings, device="cpu")
    other = dataclasses.replace(SMALL_CNN, model="resnet18")
    with pytest.raises(
        ConfigError,
        match=r"pretrain --init: .* names \d+ of the \d+ backbone entries of resnet18.*set --model",
    ):
        pretrain(items, tmp_path / "third", other, device="cpu", init=first)
    assert not (tmp_path / "third").exists()  # refused before anything was written


def test_a_per_fold_path_needs_one_backbone_at_load_and_the_final_models_counts(tmp_path, make_config):
    """Loading a config with ``{fold}`` catches a typo (no backbone at all) but not a fold still to be made."""
    from medsg.demo import make_synthetic_busi

    root = make_synthetic_busi(tmp_path / "data", n_per_class=2, size=32, seed=0)
    recipe = {"model.pretrained": str(tmp_path / "ssl" / "fold_{fold}" / BACKBONE_FILE)}
    with pytest.raises(ConfigError, match="no fold's backbone found"):
        make_config(root, tmp_path, recipe)
    (tmp_path / "ssl" / "fold_all").mkdir(parents=True)
    (tmp_path / "ssl" / "fold_all" / BACKBONE_FILE).write_bytes(b"")
    make_config(root, tmp_path, recipe)  # the final model's backbone alone: its job may come first


@pytest.mark.e2e
def test_per_fold_backbones_start_their_folds_and_none_saw_its_folds_test_images(tmp_path, make_config):
    """``model.pretrained`` with ``{fold}``: fold K starts from the backbone pretrained on fold K's training
    images; one that saw fold K's outer test images is refused before anything trains."""
    import shutil

    from synthetic import PACKAGE_RECIPE

    from medsg.demo import make_synthetic_busi
    from medsg.workflows.experiment import run_experiment
    from medsg.workflows.prepare import prepare_data

    root = make_synthetic_busi(tmp_path / "data", n_per_class=4, size=40, seed=3)
    ssl = tmp_path / "ssl"
    recipe = PACKAGE_RECIPE | {
        "experiment.name": "hpt",
        "model.pretrained": str(ssl / "fold_{fold}" / BACKBONE_FILE),
    }
    with pytest.raises(ConfigError, match="no fold's backbone found"):
        make_config(root, tmp_path, recipe)
    prepare_data(make_config(root, tmp_path, recipe, check_paths=False))  # writes the split file
    split_file = tmp_path / "splits.json"
    items = unlabelled_images("busi", root)
    settings = dataclasses.replace(SMALL_CNN, model="test_vit", img_size=32)

    def pretrain_fold(fold: int) -> None:
        kept, chosen = fold_training_images(items, split_file, fold, "busi")
        pretrain(kept, ssl / f"fold_{fold}", settings, source={"adapter": "busi"} | chosen, device="cpu")

    # one fold's job needs only its own backbone (folds may be pretrained and trained as separate jobs)
    pretrain_fold(1)
    cfg = make_config(root, tmp_path, recipe)
    with pytest.raises(ConfigError, match=r"fold 0's backbone not found: .*--fold 0"):
        run_experiment(cfg, folds=[0], quiet=True)
    assert not (Path(cfg.run_dir) / "fold_0").exists()  # refused before the fold started
    run_experiment(cfg, folds=[1], quiet=True)
    assert (Path(cfg.run_dir) / "fold_1" / "DONE").is_file()
    pretrain_fold(0)
    for fold in (0, 1):
        state = build_model(cfg, num_classes=3, fold=fold).state_dict()
        weights = read_checkpoint(ssl / f"fold_{fold}" / BACKBONE_FILE)
        assert all(torch.equal(state[k], weights[k]) for k in weights)
    with pytest.raises(ConfigError, match="one backbone per fold"):
        build_model(cfg, num_classes=3)  # no fold: which backbone is meant?

    run = run_experiment(cfg, folds=[0], quiet=True)  # fold 1 is done; fold 0 completes the run
    record = json.loads((run / "protocol.json").read_text())["pretraining"]
    assert sorted(record["per_fold"]) == ["0", "1"] and record["per_fold"]["1"]["images"]["fold"] == 1
    text = pretraining_text(cfg.model.pretrained, {"pretraining": record})
    assert "self-supervised per fold" in text and "fold K's training images" in text
    n = record["per_fold"]["0"]["images"]["n"]
    if n == record["per_fold"]["1"]["images"]["n"]:
        assert f"({n} images)" in text
    assert f"({cfg.pretrained_as_given})" in text  # the path as written, not this machine's absolute one
    assert text in (Path(cfg.report_dir) / "report.md").read_text()

    # a finished fold needs its backbone no more: rerunning every fold only writes the report again
    shutil.move(ssl / "fold_1", tmp_path / "fold_1_elsewhere")
    run_experiment(cfg, folds=[0, 1], quiet=True)
    shutil.move(tmp_path / "fold_1_elsewhere", ssl / "fold_1")

    # fold 1's backbone in fold 0's place: with two folds, it pretrained on fold 0's test images
    shutil.rmtree(ssl / "fold_0")
    shutil.copytree(ssl / "fold_1", ssl / "fold_0")
    leaky = make_config(root, tmp_path, recipe | {"experiment.name": "leaky"})
    with pytest.raises(ConfigError, match="outer test images of fold 0"):
        run_experiment(leaky, folds=[0, 1], quiet=True)
    assert not any((Path(leaky.run_dir) / "fold_0").glob("*.pt"))
