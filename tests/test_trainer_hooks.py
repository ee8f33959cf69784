"""train.trainer names the fold's trainer class; callbacks watch train_step; the final model keeps the recipe."""

from __future__ import annotations

import pytest
import torch

from medsg.core.errors import ConfigError
from medsg.train.final import FinalTrainer
from medsg.train.fold import FoldTrainer, trainer_class
from medsg.train.kfold import final_trainer_class, train_one_fold
from medsg.train.model import build_model
from tests.test_train import Factory, toy_overrides

CUSTOM = '''
from medsg.train.fold import FoldTrainer


class HalvedLossTrainer(FoldTrainer):
    """A recipe change by a hook: validation is recorded, and every epoch's row is kept."""

    rows = []

    def on_epoch_end(self, row):
        super().on_epoch_end(row)
        type(self).rows.append(dict(row))


class NotATrainer:
    pass
'''


@pytest.fixture
def toy_config(make_config):
    """The toy fold's config (tests.test_train), ``train`` keys on top."""
    return lambda out, **train: make_config(out, None, toy_overrides(out, **train), check_paths=False)


@pytest.fixture
def custom_module(tmp_path, monkeypatch):
    (tmp_path / "my_recipes.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_recipes"


class Recorder:
    """A TrainerCallback that records what it hears."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_phase_end(self, trainer, phase):
        self.events.append(phase)

    def on_epoch_end(self, trainer, row):
        self.events.append(f"epoch {row['epoch']}")


def test_default_trainer_and_bad_paths(toy_config, tmp_path, custom_module):
    assert trainer_class(toy_config(tmp_path)) is FoldTrainer
    with pytest.raises(ConfigError, match=r"train.trainer: cannot import 'no_such_module'"):
        trainer_class(toy_config(tmp_path, trainer="no_such_module.Trainer"))
    with pytest.raises(ConfigError, match=r"train.trainer: 'my_recipes.NotATrainer' is not a FoldTrainer"):
        trainer_class(toy_config(tmp_path, trainer="my_recipes.NotATrainer"))
    with pytest.raises(ConfigError, match="is not a FoldTrainer"):
        trainer_class(toy_config(tmp_path, trainer="my_recipes.Missing"))


def test_custom_trainer_runs_the_fold_and_the_final_model(toy_config, tmp_path, custom_module):
    cfg = toy_config(tmp_path, epochs=2, trainer="my_recipes.HalvedLossTrainer")
    custom = trainer_class(cfg)
    assert custom.__name__ == "HalvedLossTrainer"
    train_one_fold(cfg, 0, Factory(), tmp_path)
    assert [r["epoch"] for r in custom.rows] == [1, 2]  # its on_epoch_end ran, once per epoch
    final = final_trainer_class(cfg)
    assert issubclass(final, FinalTrainer) and issubclass(final, custom)  # the final model keeps the recipe
    assert final_trainer_class(toy_config(tmp_path)) is FinalTrainer


def test_callback_hears_each_phase_of_the_real_train_step(toy_config, tmp_path):
    cfg = toy_config(tmp_path, epochs=1)
    model = build_model(cfg, num_classes=3)
    recorder = Recorder()
    trainer = FoldTrainer(
        cfg, 0, model, Factory()(0, model), tmp_path / "fold_0", torch.device("cpu"), callbacks=[recorder]
    )
    trainer.fit()
    steps = trainer.steps_per_epoch
    assert recorder.events == ["forward", "backward", "optimizer"] * steps + ["epoch 1"]
