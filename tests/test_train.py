"""The fold loop on a tiny in-memory dataset: exact resume, seed repeatability, NaN stop, selection, samplers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

import medsg.train.fold as fold_mod
from medsg.core.errors import TrainingDiverged
from medsg.train.fold import HISTORY_COLUMNS
from medsg.train.kfold import run_folds, train_one_fold
from medsg.train.loader import FoldData, class_weights, epoch_indices
from medsg.train.model import build_model
from medsg.train.selection import is_better
from medsg.train.state import numpy_state_from_torch, numpy_state_to_torch, weights_checksum
from medsg.train.utils import get_rng_states

CLASSES = ["a", "b", "c"]


class Blobs(Dataset):
    """Noise images whose mean depends on the label: learnable in a few steps."""

    def __init__(self, ids: np.ndarray):
        self.ids = [int(i) for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        idx = self.ids[i]
        label = idx % 3
        g = torch.Generator().manual_seed(idx)
        return {"image": torch.randn(3, 32, 32, generator=g) + 0.7 * label, "label": label, "id": f"img{idx}"}


class Factory:
    """A FoldDataFactory over 48 images: test = ids with idx % 2 == fold; val = 9 of the rest."""

    class_names = CLASSES

    def __call__(self, fold: int, model) -> FoldData:
        ids = np.arange(48)
        test, rest = ids[ids % 2 == fold], ids[ids % 2 != fold]
        val, train = rest[:9], rest[9:]
        return FoldData(Blobs(train), train % 3, Blobs(val), Blobs(test), CLASSES)


def toy_overrides(out: Path, **train) -> dict:
    """``make_config`` overrides for the toy fold, its run folder (and data.root, never read) at ``out``: 2
    epochs (1 of warm-up) at lr 2e-3 in fp32, ``train`` keys on top. The decode cache, inner-validation
    fraction and bootstrap stay the schema's (the factory makes its own splits and nothing reports)."""
    toy = {
        "experiment.seed": 3,
        "experiment.output_dir": out,
        "data.cache": "memory",
        "splits.inner_val_fraction": 0.15,
        "model.drop_path": 0.1,
        "train.epochs": 2,
        "train.lr": 2e-3,
        "train.warmup_epochs": 1,
        "train.amp": False,
        "eval.bootstrap": 1000,
    }
    return toy | {f"train.{key}": value for key, value in train.items()}


@pytest.fixture(scope="session")
def toy_config(make_config):
    """``toy_config(out, **train)``: the toy fold's config (``toy_overrides``)."""
    return lambda out, **train: make_config(out, None, toy_overrides(out, **train), check_paths=False)


def results(fold_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    metrics = json.loads((fold_dir / "metrics.json").read_text())
    preds = pd.read_csv(fold_dir / "predictions.csv")
    history = pd.read_csv(fold_dir / "history.csv").drop(columns="time_s")
    return metrics, preds, history


def interrupt_in_epoch_two(monkeypatch, cfg, out: Path):
    """Train the toy fold until the first step of epoch 2, then stop as a kill -9 would (checkpoint_last holds
    epoch 1); returns the real loss function, still patched out."""
    real_loss = fold_mod.compute_loss
    calls = {"n": 0}
    steps_per_epoch = math.ceil(15 / 8)

    def interrupt(criterion, logits, targets):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 1:
            raise KeyboardInterrupt
        return real_loss(criterion, logits, targets)

    monkeypatch.setattr(fold_mod, "compute_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_one_fold(cfg, 0, Factory(), out)
    return real_loss


def test_resume_after_interruption_matches_uninterrupted_run_and_is_repeatable(
    tmp_path, monkeypatch, toy_config
):
    cfg_a = toy_config(tmp_path / "a")
    train_one_fold(cfg_a, 0, Factory(), tmp_path / "a")
    cfg_b = toy_config(tmp_path / "b")
    real_loss = interrupt_in_epoch_two(monkeypatch, cfg_b, tmp_path / "b")
    last = torch.load(tmp_path / "b" / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == 1 and not (tmp_path / "b" / "fold_0" / "DONE").exists()
    assert {"state_dict", "optimizer", "scheduler", "rng", "best", "history", "epoch"} <= set(last)
    assert {"python", "numpy", "torch"} <= set(last["rng"])
    monkeypatch.setattr(fold_mod, "compute_loss", real_loss)
    torch.manual_seed(12345)  # a different global RNG state must not matter after resume
    train_one_fold(cfg_b, 0, Factory(), tmp_path / "b")

    ma, pa, ha = results(tmp_path / "a" / "fold_0")
    mb, pb, hb = results(tmp_path / "b" / "fold_0")
    assert ma == mb
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ha, hb)
    # Same config in a fresh folder: identical numbers (seed repeatability on CPU).
    train_one_fold(toy_config(tmp_path / "c"), 0, Factory(), tmp_path / "c")
    mc, pc, _ = results(tmp_path / "c" / "fold_0")
    assert mc == ma
    pd.testing.assert_frame_equal(pa, pc)


def test_fold_files_and_columns(tmp_path, toy_config):
    cfg = toy_config(tmp_path, ema=True, ema_decay=0.9)
    metrics = train_one_fold(cfg, 1, Factory(), tmp_path)
    d = tmp_path / "fold_1"
    for name in (
        "checkpoint_best.pt",
        "checkpoint_last.pt",
        "history.csv",
        "predictions.csv",
        "metrics.json",
        "DONE",
    ):
        assert (d / name).is_file(), name
    assert list(pd.read_csv(d / "history.csv").columns) == HISTORY_COLUMNS
    preds = pd.read_csv(d / "predictions.csv")
    assert list(preds.columns) == ["id", "fold", "y_true", "y_pred", "p_a", "p_b", "p_c"]
    assert len(preds) == 24 and (preds["fold"] == 1).all()
    np.testing.assert_allclose(preds[["p_a", "p_b", "p_c"]].sum(axis=1), 1.0, atol=1e-9)
    saved = json.loads((d / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics, default=float))
    assert saved["fold"] == 1 and saved["n_test"] == 24 and 1 <= saved["best_epoch"] <= 2
    assert "inner-validation" in saved["selection"] and "EMA" in saved["selection"]
    assert {"balanced_accuracy", "macro_auroc", "confusion_matrix", "per_class"} <= set(saved)
    best = torch.load(d / "checkpoint_best.pt", weights_only=True)
    assert best["state_dict_ema"] is not None and "optimizer" not in best
    # The deployable checkpoint loads with the model package's loader (EMA weights first).
    from medsg.models import load_checkpoint

    model = build_model(cfg, 3)
    assert load_checkpoint(model, d / "checkpoint_best.pt")["source"] == "state_dict_ema"


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, toy_config):
    cfg = toy_config(tmp_path, epochs=3)
    real_loss = fold_mod.compute_loss
    calls = {"n": 0}

    def diverge(criterion, logits, targets):
        calls["n"] += 1
        loss = real_loss(criterion, logits, targets)
        return loss * float("nan") if calls["n"] > 2 else loss  # epoch 1 has 2 steps, then NaN

    monkeypatch.setattr(fold_mod, "compute_loss", diverge)
    with pytest.raises(
        TrainingDiverged, match=r"fold 0, epoch 2, step 1: loss is nan .*lower train\.lr"
    ) as err:
        train_one_fold(cfg, 0, Factory(), tmp_path)
    assert err.value.epoch == 2
    last = torch.load(tmp_path / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "fold_0" / "DONE").exists()


def test_huge_lr_never_saves_a_non_finite_model(tmp_path, toy_config):
    # One epoch: checkpoints are written only after an epoch whose loss and weights stayed finite, so a
    # divergence inside that epoch must leave no checkpoint at all (a later resume then starts clean).
    cfg = toy_config(tmp_path, epochs=1, lr=1e30, warmup_epochs=0, weight_decay=0.0, layer_decay=None)
    with pytest.raises(TrainingDiverged) as err:
        train_one_fold(cfg, 0, Factory(), tmp_path)
    assert err.value.fold == 0 and err.value.epoch == 1
    fold = tmp_path / "fold_0"
    assert not (fold / "checkpoint_last.pt").exists() and not (fold / "checkpoint_best.pt").exists()
    assert not (fold / "DONE").exists()


def test_divergence_in_epoch_two_keeps_the_finite_epoch_one_checkpoint(tmp_path, monkeypatch, toy_config):
    cfg = toy_config(tmp_path, epochs=2)
    real_loss, calls = fold_mod.compute_loss, []
    steps_per_epoch = math.ceil(15 / 8)  # 24 non-test ids minus 9 inner-val ids, batch 8

    def nan_in_epoch_two(criterion, logits, targets):
        calls.append(1)
        loss = real_loss(criterion, logits, targets)
        return loss * float("nan") if len(calls) > steps_per_epoch else loss

    monkeypatch.setattr(fold_mod, "compute_loss", nan_in_epoch_two)
    with pytest.raises(TrainingDiverged) as err:
        train_one_fold(cfg, 0, Factory(), tmp_path)
    assert err.value.epoch == 2 and err.value.step == 1
    saved = torch.load(tmp_path / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_last_epoch_selection_and_fold_skipping(tmp_path, monkeypatch, toy_config):
    cfg = toy_config(tmp_path, selection="last_epoch", epochs=2)
    out = run_folds(cfg, [0], Factory(), tmp_path)
    assert out[0]["best_epoch"] == 2 and out[0]["selection"].startswith("fixed schedule")

    def boom(self):
        raise AssertionError("a finished fold must not be trained again")

    monkeypatch.setattr(fold_mod.FoldTrainer, "run", boom)
    assert run_folds(cfg, [0], Factory(), tmp_path) == {}


def test_selection_rule_tie_breaks_on_val_loss():
    best = {"epoch": 1, "val_balanced_accuracy": 0.8, "val_loss": 0.5}
    assert is_better({"val_balanced_accuracy": 0.9, "val_loss": 9.0}, best, "inner_val")
    assert is_better({"val_balanced_accuracy": 0.8, "val_loss": 0.4}, best, "inner_val")
    assert not is_better({"val_balanced_accuracy": 0.8, "val_loss": 0.6}, best, "inner_val")
    assert not is_better({"val_balanced_accuracy": 0.7, "val_loss": 0.1}, best, "inner_val")
    assert is_better({"val_balanced_accuracy": 0.1, "val_loss": 9.0}, best, "last_epoch")


def test_epoch_indices_are_seeded_and_shard_like_distributed_sampler():
    labels = np.array([0] * 10 + [1] * 3)
    a, b = epoch_indices(labels, 5, False), epoch_indices(labels, 5, False)
    assert a == b and sorted(a) == list(range(13)) and a != epoch_indices(labels, 6, False)
    shards = [epoch_indices(labels, 5, False, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 7
    assert set(shards[0]) | set(shards[1]) == set(range(13))
    balanced = epoch_indices(np.array([0] * 90 + [1] * 10), 0, True)
    assert 0.3 < np.mean(np.array(balanced) >= 90) < 0.7  # the minority class drawn about half the time


def test_class_weights_balanced():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w.numpy(), [4 / 9, 4 / 3, 0.0], rtol=1e-6)


def test_rng_states_are_checkpointable():
    states = get_rng_states()
    torch_state = numpy_state_to_torch(states)
    back = numpy_state_from_torch(torch_state)
    assert (back["numpy"][1] == states["numpy"][1]).all()


def test_early_stopping_survives_resume(tmp_path, monkeypatch, toy_config):
    flat = {"val_loss": 1.0, "val_accuracy": 0.5, "val_balanced_accuracy": 0.5, "val_macro_auroc": 0.5}
    monkeypatch.setattr(fold_mod, "val_metrics", lambda y, probs: dict(flat))  # never improves after epoch 1
    cfg = toy_config(tmp_path, epochs=5, early_stop_patience=2)
    metrics = train_one_fold(cfg, 0, Factory(), tmp_path)
    assert metrics["best_epoch"] == 1 and metrics["epochs_trained"] == 3 and metrics["stopped_early"] is True
    assert len(pd.read_csv(tmp_path / "fold_0" / "history.csv")) == 3
    (tmp_path / "fold_0" / "DONE").unlink()  # as if killed before the test-fold prediction
    again = train_one_fold(cfg, 0, Factory(), tmp_path)
    assert again["epochs_trained"] == 3 and again == metrics


def test_weights_checksum_sees_one_changed_value():
    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "n": torch.tensor(3)}
    same = {"n": torch.tensor(3), "w": torch.arange(6, dtype=torch.float32).view(2, 3)}
    assert weights_checksum(state) == weights_checksum(same)  # key order does not matter
    changed = {**same, "w": same["w"].clone()}
    changed["w"][1, 2] = torch.nextafter(changed["w"][1, 2], torch.tensor(100.0))
    assert weights_checksum(state) != weights_checksum(changed)


def test_val_metrics_are_the_report_metrics_even_with_a_class_missing() -> None:
    # One implementation: a small inner split without class 2 still has a macro AUROC (over the classes
    # present), the same number the report computes; the old copy returned NaN here.
    from medsg.metrics import classification_metrics
    from medsg.train.evaluate import val_metrics

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=40)
    y = rng.integers(0, 2, size=40)
    got = val_metrics(y, probs)
    ref = classification_metrics(y, probs, ["a", "b", "c"])
    assert got["val_macro_auroc"] == ref["macro_auroc"] and not np.isnan(got["val_macro_auroc"])
    assert got["val_balanced_accuracy"] == ref["balanced_accuracy"]
    assert got["val_loss"] == pytest.approx(ref["log_loss"], rel=1e-9)


def test_deterministic_seeding_skips_the_nan_fill_of_new_tensors():
    """Deterministic kernels stay on; only torch's NaN-filling of uninitialised memory (a debugging aid that
    cost about a tenth of a CPU step) is off, and a non-deterministic run leaves both as they were and lets
    cuDNN autotune."""
    from medsg.train.utils import seed_everything

    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = True
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory
        assert torch.backends.cudnn.benchmark
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
        torch.backends.cudnn.benchmark = before[2]


def test_training_augmentation_does_not_depend_on_the_worker_count(tmp_path):
    """Each sample's random transforms are seeded from (epoch seed, its place in the epoch), so the main process
    and two workers give the same batches; another epoch seed gives other draws. (Images this small stay under
    torch's parallel grain, so the main process computes them on one thread like a worker and the pixels are equal
    to the bit; larger images can differ in rounding, see SeededAugmentation.)"""
    from PIL import Image

    from medsg.data.dataset import build_dataset
    from medsg.data.transforms import build_transforms
    from medsg.train.loader import training_loader

    rng = np.random.default_rng(0)
    records = []
    for i in range(10):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        records.append({"image": str(path), "label": i % 2, "id": str(i)})
    transform = build_transforms(32, (0.5,) * 3, (0.25,) * 3, train=True, color_aug=True, with_mask=False)
    dataset = build_dataset(records, transform, cache="memory")
    order = epoch_indices(np.array([r["label"] for r in records]), 3, False)

    def images(workers: int, epoch_seed: int = 3) -> torch.Tensor:
        loader = training_loader(dataset, 4, workers, order, epoch_seed)
        return torch.cat([torch.as_tensor(batch["image"]) for batch in loader])

    main_process = images(0)
    assert torch.equal(main_process, images(2))
    assert torch.equal(main_process, images(0))
    assert not torch.equal(main_process, images(0, epoch_seed=4))


@pytest.mark.parametrize("kill", ["before_last", "before_publish"])
def test_a_kill_around_checkpoint_last_never_publishes_a_best_it_does_not_record(
    tmp_path, monkeypatch, toy_config, kill
):
    """Epoch 1 always improves. Killed before checkpoint_last.pt records it, its best checkpoint and validation
    predictions stay unpublished (the epoch runs again and decides again); killed after, they are published on
    resume. Either way the fold ends as an uninterrupted one does."""
    train_one_fold(toy_config(tmp_path / "a"), 0, Factory(), tmp_path / "a")
    fold_dir = tmp_path / "b" / "fold_0"
    real_save, real_commit = fold_mod.atomic_torch_save, fold_mod.FoldTrainer._commit_pending

    def save(obj, path):
        if kill == "before_last" and Path(path).name == "checkpoint_last.pt":
            raise KeyboardInterrupt
        return real_save(obj, path)

    def commit(self):
        if (fold_dir / "checkpoint_best.next.pt").exists():  # the end of epoch 1, not the start of the run
            raise KeyboardInterrupt
        real_commit(self)

    monkeypatch.setattr(fold_mod, "atomic_torch_save", save)
    if kill == "before_publish":
        monkeypatch.setattr(fold_mod.FoldTrainer, "_commit_pending", commit)
    with pytest.raises(KeyboardInterrupt):
        train_one_fold(toy_config(tmp_path / "b"), 0, Factory(), tmp_path / "b")
    assert not (fold_dir / "checkpoint_best.pt").exists() and not (fold_dir / "val_predictions.csv").exists()
    assert (fold_dir / "checkpoint_last.pt").exists() == (kill == "before_publish")
    monkeypatch.setattr(fold_mod, "atomic_torch_save", real_save)
    monkeypatch.setattr(fold_mod.FoldTrainer, "_commit_pending", real_commit)

    def killed_again(self):  # the restart is killed once it has settled the pending files
        raise KeyboardInterrupt

    monkeypatch.setattr(fold_mod.FoldTrainer, "resume", killed_again)
    with pytest.raises(KeyboardInterrupt):
        train_one_fold(toy_config(tmp_path / "b"), 0, Factory(), tmp_path / "b")
    if kill == "before_last":  # epoch 1 was never recorded: its best is dropped
        assert not (fold_dir / "checkpoint_best.pt").exists() and not list(fold_dir.glob("*.next.*"))
    else:  # recorded: published, as checkpoint_last says
        last = torch.load(fold_dir / "checkpoint_last.pt", weights_only=True)
        best = torch.load(fold_dir / "checkpoint_best.pt", weights_only=True)
        assert best["epoch"] == last["best"]["epoch"] == 1 and (fold_dir / "val_predictions.csv").is_file()
    monkeypatch.undo()
    train_one_fold(toy_config(tmp_path / "b"), 0, Factory(), tmp_path / "b")
    ma, pa, ha = results(tmp_path / "a" / "fold_0")
    mb, pb, hb = results(fold_dir)
    assert ma == mb
    pd.testing.assert_frame_equal(pa, pb)
    pd.testing.assert_frame_equal(ha, hb)
    best = torch.load(fold_dir / "checkpoint_best.pt", weights_only=True)
    assert best["epoch"] == mb["best_epoch"] and not list(fold_dir.glob("*.next.*"))


def test_rng_states_saved_on_more_gpus_restore_on_fewer(monkeypatch):
    from medsg.train.utils import set_rng_states

    states = get_rng_states() | {"cuda": [torch.zeros(8, dtype=torch.uint8) + i for i in range(3)]}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state)))

    def all_devices(states):  # what torch does on a machine with one GPU
        raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", all_devices)
    set_rng_states(states)
    assert [d for d, _ in restored] == [0] and torch.equal(restored[0][1], states["cuda"][0])


def test_a_checkpoint_that_does_not_fit_the_optimizer_is_one_clear_error(tmp_path, monkeypatch, toy_config):
    from medsg.core.errors import CheckpointError

    interrupt_in_epoch_two(monkeypatch, toy_config(tmp_path), tmp_path)
    last = tmp_path / "fold_0" / "checkpoint_last.pt"
    state = torch.load(last, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1] * 7  # a torch/timm upgrade
    torch.save(state, last)
    with pytest.raises(CheckpointError, match=r"checkpoint_last\.pt cannot resume this fold .*delete"):
        train_one_fold(toy_config(tmp_path), 0, Factory(), tmp_path)


def test_a_best_checkpoint_ahead_of_its_record_is_named_on_resume(tmp_path, monkeypatch, toy_config, caplog):
    """A fold folder killed by an older medsg between its best and last saves holds a best of an epoch
    checkpoint_last.pt does not record: the resume says so instead of silently testing those weights."""
    cfg = toy_config(tmp_path)
    interrupt_in_epoch_two(monkeypatch, cfg, tmp_path)
    monkeypatch.undo()
    best = tmp_path / "fold_0" / "checkpoint_best.pt"
    state = torch.load(best, weights_only=True)
    torch.save(state | {"epoch": 2}, best)  # as the old order left it: best written for epoch 2, last not
    with caplog.at_level("WARNING", logger="medsg.train.fold"):
        train_one_fold(cfg, 0, Factory(), tmp_path)
    assert "checkpoint_best.pt holds epoch 2 but checkpoint_last.pt records epoch 1" in caplog.text
