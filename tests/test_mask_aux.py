"""train.mask_loss_weight: an auxiliary lesion-mask loss that trains with the fold, resumes exactly and never
reaches the exported model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from medsg.core.errors import ConfigError
from medsg.demo import make_synthetic_busi
from medsg.train.fold import FoldTrainer, trainer_class
from medsg.train.mask_aux import MaskAuxTrainer, mask_feature_module, mask_loss
from medsg.train.state import load_training_checkpoint
from medsg.workflows.experiment import run_experiment

MASKED = {
    "experiment.name": "mask",
    "experiment.seed": 0,
    "splits.seed": 0,
    "train.epochs": 2,
    "train.lr": 1e-3,
    "train.mask_loss_weight": 1.0,
    "explain.cases_per_fold": 0,
}


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory) -> Path:
    return make_synthetic_busi(tmp_path_factory.mktemp("data"), n_per_class=6, size=32, seed=1)


def _config(make_config, root: Path, out: Path, **extra):
    return make_config(root, out, MASKED, extra, model="sgformer_tiny")


def test_mask_loss_targets_the_lesion_fraction_of_each_cell():
    masks = torch.zeros(1, 1, 8, 8)
    masks[..., :4, :4] = 1  # the top-left quarter: one cell of a 2 x 2 grid
    confident = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert mask_loss(confident, masks) < 1e-6
    assert mask_loss(-confident, masks) > 10  # the lesion called background and a background cell lesion
    half = torch.zeros(1, 1, 1, 1)  # one cell over the whole image: target 0.25, p = 0.5
    expected = -(0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(0.5)))
    assert torch.isclose(mask_loss(half, masks), expected)


def test_the_head_reads_the_stride_16_stage():
    from medsg.models import create_model

    model = create_model("sgformer_tiny", 224, num_classes=3)
    name, channels = mask_feature_module(model)
    assert name == "stages.2" and channels == model.embed_dims[2]


def test_weight_selects_the_mask_trainer_and_refuses_one_without_masks(make_config, busi_root, tmp_path):
    assert trainer_class(_config(make_config, busi_root, tmp_path)) is MaskAuxTrainer
    assert (
        trainer_class(_config(make_config, busi_root, tmp_path, **{"train.mask_loss_weight": 0}))
        is FoldTrainer
    )
    with pytest.raises(ConfigError, match="does not train on masks"):
        trainer_class(
            _config(make_config, busi_root, tmp_path, **{"train.trainer": "medsg.train.final.FinalTrainer"})
        )


def test_a_data_set_without_masks_is_refused_by_name(make_config, tmp_path):
    root = make_synthetic_busi(tmp_path / "data", n_per_class=6, size=32, seed=1)
    for mask in root.rglob("*_mask*.png"):
        mask.unlink()
    with pytest.raises(ConfigError, match=r"no image of busi has a lesion mask.*mask_loss_weight: 0"):
        run_experiment(_config(make_config, root, tmp_path / "out"), folds=[0], quiet=True)


@pytest.mark.e2e
def test_a_killed_fold_resumes_with_its_mask_head_and_exports_without_it(
    make_config, busi_root, tmp_path, interrupt_after_first_epoch
):
    """Kill after epoch 1, resume: the same predictions as one go, which needs the head (and its optimizer
    state) restored. The mask term moves the head, and the model's weights never carry it."""
    full = run_experiment(_config(make_config, busi_root, tmp_path / "a"), folds=[0], quiet=True)
    killed = _config(make_config, busi_root, tmp_path / "b")
    interrupt_after_first_epoch(lambda: run_experiment(killed, folds=[0], quiet=True))
    after_one = load_training_checkpoint(tmp_path / "b" / "runs" / "mask" / "fold_0" / "checkpoint_last.pt")
    assert after_one["epoch"] == 1
    resumed = run_experiment(_config(make_config, busi_root, tmp_path / "b"), folds=[0], quiet=True)

    a = json.loads((full / "fold_0" / "metrics.json").read_text())
    b = json.loads((resumed / "fold_0" / "metrics.json").read_text())
    assert a == b and a["epochs_trained"] == 2
    pd.testing.assert_frame_equal(
        pd.read_csv(full / "fold_0" / "predictions.csv"), pd.read_csv(resumed / "fold_0" / "predictions.csv")
    )
    last = load_training_checkpoint(full / "fold_0" / "checkpoint_last.pt")
    last_resumed = load_training_checkpoint(resumed / "fold_0" / "checkpoint_last.pt")
    for part in ("state_dict", "mask_head"):  # bitwise: the backbone's last step felt the restored head
        for key, value in last[part].items():
            assert torch.equal(value, last_resumed[part][key]), f"{part}.{key} differs after resume"
    assert not torch.equal(last["mask_head"]["weight"], after_one["mask_head"]["weight"])  # it trains
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        state = load_training_checkpoint(full / "fold_0" / name)
        assert not any("mask" in key for key in state["state_dict"])  # the model is the plain classifier


def test_the_report_recipe_names_the_mask_loss(make_config, busi_root, tmp_path):
    from medsg.report.protocol import recipe

    def loss_row(**extra) -> str:
        rows = recipe(_config(make_config, busi_root, tmp_path, **extra))
        return next(r["value"] for r in rows if r["item"] == "loss")

    assert "plus 1 x the lesion-mask BCE" in loss_row()
    assert "mask" not in loss_row(**{"train.mask_loss_weight": 0})
