"""fold_K/significance.npz: SG-Former significance maps of a few test cases, saved after the test prediction."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch

from medsg.config import config_from_dict
from medsg.demo import make_synthetic_busi
from medsg.experiment import ManifestFolds, prepare_data, run_experiment
from medsg.explain import significance_maps
from medsg.train.model import build_model
from medsg.train.significance import export_significance, pick_cases
from medsg.train.state import load_training_checkpoint, selected_weights


def make_cfg(root: Path, out: Path, *overrides: str):
    raw = {
        "experiment": {"name": "sig", "output_dir": str(out / "runs"), "report_dir": str(out / "report")},
        "data": {"adapter": "busi", "root": str(root), "cache": "none"},
        "splits": {"k": 2, "file": str(out / "splits.json"), "inner_val_fraction": 0.0},
        "model": {"name": "sgformer_tiny", "img_size": 224, "drop_path": 0.0},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "workers": 0,
            "device": "cpu",
            "warmup_epochs": 0,
            "selection": "last_epoch",
            "layer_decay": None,
        },
        "eval": {"bootstrap": 10},
        "explain": {"cases_per_fold": 2},
    }
    return config_from_dict(raw, list(overrides))


def test_pick_cases_takes_classes_in_turn_with_sorted_ids():
    ids = ["c3", "a1", "b2", "a0", "c1", "b9"]
    labels = [2, 0, 1, 0, 2, 1]
    assert pick_cases(ids, labels, 4) == [3, 2, 4, 1]  # a0 (0), b2 (1), c1 (2), then a1 (0)
    assert pick_cases(ids, labels, 100) == [3, 2, 4, 1, 5, 0]
    assert pick_cases(ids, labels, 0) == [] and pick_cases([], [], 3) == []


def test_fold_writes_significance_of_its_first_test_cases(tmp_path):
    root = make_synthetic_busi(tmp_path / "data", n_per_class=3, size=32, seed=4)
    cfg = make_cfg(root, tmp_path)
    run_dir = run_experiment(cfg, folds=[0], quiet=True, report=False)
    fold = run_dir / "fold_0"
    with np.load(fold / "significance.npz") as npz:
        saved = {key: npz[key] for key in npz.files}  # loads without pickle: plain arrays only

    preds = pd.read_csv(fold / "predictions.csv").set_index("id")
    want_pos = pick_cases(list(preds.index), preds["y_true"].tolist(), 2)
    assert list(saved["ids"]) == [preds.index[i] for i in want_pos]
    assert saved["labels"].tolist() == preds["y_true"].iloc[want_pos].tolist()
    assert len(set(saved["labels"])) == 2  # two cases, two classes
    np.testing.assert_allclose(saved["probs"], preds.iloc[want_pos][["p_benign", "p_malignant", "p_normal"]])
    assert list(saved["class_names"]) == ["benign", "malignant", "normal"]
    assert saved["images"].shape == (2, 224, 224, 3) and saved["images"].dtype == np.uint8

    # The same inputs through the selected checkpoint give the same maps.
    model = build_model(cfg, 3)
    model.load_state_dict(selected_weights(load_training_checkpoint(fold / "checkpoint_best.pt"), True))
    model.eval()
    test = ManifestFolds(cfg, prepare_data(cfg), run_dir)(0, model).test
    by_id = {str(test[i]["id"]): i for i in range(len(test))}
    x = torch.stack(
        [torch.as_tensor(test[by_id[i]]["image"]).as_subclass(torch.Tensor) for i in saved["ids"]]
    )
    with torch.no_grad():
        maps = significance_maps(model, x.float())
    blocks = set(saved) - {"ids", "labels", "probs", "class_names", "images"}
    assert blocks == set(maps) and blocks
    for name, value in maps.items():
        assert saved[name].shape == tuple(value.shape) and saved[name].shape[0] == 2
        np.testing.assert_allclose(saved[name], value.numpy(), rtol=1e-4, atol=1e-6)
    # The images are the model inputs, un-normalised (8-bit rounding only).
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    pixels = ((x * std + mean).clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(saved["images"].astype(np.float64) - pixels).max() <= 0.5 + 1e-3


def test_no_file_when_disabled_or_without_significance_maps(tmp_path, caplog):
    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> dict:
            return {"image": torch.zeros(3, 32, 32), "label": i, "id": f"x{i}"}

    predictions = (["x0", "x1"], np.array([0, 1]), np.full((2, 2), 0.5))
    path = tmp_path / "significance.npz"
    vit = timm.create_model("test_vit", num_classes=2, img_size=32)
    with caplog.at_level(logging.INFO, logger="medsg.train.significance"):
        args = (Images(), predictions, ["a", "b"])
        assert export_significance(vit, *args, 2, path, torch.device("cpu"), 2) is None
    assert "not an SG-Former" in caplog.text and not path.exists()
    tiny = timm.create_model("sgformer_tiny", num_classes=2)
    assert export_significance(tiny, *args, 0, path, torch.device("cpu"), 2) is None
    assert not path.exists()
