"""``eval.tta``: the selected model's inner-validation and test probabilities are two-view means (the image and its
horizontal flip), calibration is fitted on those means, and a package applies the same to new images."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from synthetic import PACKAGE_RECIPE, bundle_inputs

from medsg.calibration import fold_calibration
from medsg.config import TTA_TEXT, config_hash, result_diff
from medsg.demo import make_synthetic_busi
from medsg.deploy.package import export_package, load_model
from medsg.deploy.predict import (
    InputItem,
    PredictOptions,
    member_probs,
    predict_items,
    raw_probs,
)
from medsg.workflows.experiment import run_experiment

TTA = {"experiment.name": "tta", **PACKAGE_RECIPE, "eval.tta": True}


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("tta")
    root = make_synthetic_busi(out / "data", n_per_class=4, size=40, seed=5)
    cfg = make_config(root, out, TTA)
    run_dir = run_experiment(cfg, folds=[0, 1], quiet=True)
    return run_dir, export_package(run_dir, out / "package")


def _images(bundle, run_dir, ids):
    paths = pd.read_csv(run_dir / "manifest.csv", dtype=str).set_index("id").loc[ids, "path"]
    items = [InputItem(i, p) for i, p in zip(ids, paths, strict=True)]
    return items, bundle_inputs(bundle, paths)


def _frame_probs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy()


@pytest.mark.e2e
def test_test_and_validation_predictions_are_two_view_means(run):
    run_dir, _ = run
    bundle = load_model(run_dir)
    assert bundle.tta
    for member in bundle.members:
        model = bundle.build(member)
        folder = run_dir / f"fold_{member.name}"
        for name in ("predictions.csv", "val_predictions.csv"):
            frame = pd.read_csv(folder / name, dtype={"id": str})
            _, images = _images(bundle, run_dir, list(frame["id"]))
            plain, flipped = raw_probs(model, images), raw_probs(model, images.flip(-1))
            assert np.abs(plain - flipped).max() > 1e-4  # the model is not flip-invariant: the test can fail
            np.testing.assert_allclose(_frame_probs(frame), (plain + flipped) / 2, atol=1e-6)


@pytest.mark.e2e
def test_calibration_is_fitted_on_the_two_view_means_and_predict_applies_it_once(run):
    run_dir, package = run
    bundle = load_model(package)
    assert (
        bundle.decision == "balanced"
    )  # so calibrated_predictions.csv (temperature only) is what predict gives
    for member in bundle.members:
        folder = run_dir / f"fold_{member.name}"
        val = pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})
        refit = fold_calibration(val["y_true"].to_numpy(), _frame_probs(val), bundle.class_names, "no val")
        assert member.temperature == pytest.approx(refit["temperature"], rel=1e-9)
    member = bundle.members[0]
    cal = pd.read_csv(run_dir / "fold_0" / "calibrated_predictions.csv", dtype={"id": str})
    items, images = _images(bundle, run_dir, list(cal["id"]))
    calibrated, _ = member_probs(
        [bundle.build(member)], [member], images, decision="balanced", fitted_tta=True
    )
    np.testing.assert_allclose(calibrated[0], _frame_probs(cal), atol=1e-6)
    # the package's own predict does the same without --tta, and says so
    one_fold = replace(bundle, members=[member])
    out = run_dir.parent / "predict_tta"
    result = predict_items(one_fold, items, out, PredictOptions(which="folds"), collect=True)
    np.testing.assert_allclose(np.array(result.probs), _frame_probs(cal), atol=1e-6)
    summary = json.loads((out / "predict.json").read_text())
    assert "eval.tta" in summary["tta"] and "horizontal flip" in summary["tta"]


@pytest.mark.e2e
def test_without_fitted_tta_one_view_is_bit_identical_and_tta_calibrates_each_view(run):
    """One view: raw probabilities are raw_probs's bit for bit; --tta calibrates each view, then averages."""
    run_dir, package = run
    bundle = load_model(package)
    member = bundle.members[0]
    model = bundle.build(member)
    _, real = _images(bundle, run_dir, list(pd.read_csv(run_dir / "manifest.csv", dtype=str)["id"][:1]))
    # many inputs, so that a second row normalisation (which moves the last bit of some rows) would show
    images = torch.randn((256, *real.shape[1:]), generator=torch.Generator().manual_seed(0))
    calibrated, raw = member_probs([model], [member], images, decision="balanced")
    assert np.array_equal(raw[0], raw_probs(model, images))
    assert np.array_equal(calibrated[0], member.calibrated(raw_probs(model, images)))
    per_view = [member.calibrated(raw_probs(model, v)) for v in (images, images.flip(-1))]
    calibrated, _ = member_probs([model], [member], images, tta=True, decision="balanced")
    np.testing.assert_allclose(calibrated[0], np.mean(per_view, axis=0), atol=1e-12)


@pytest.mark.e2e
def test_report_and_model_card_state_the_test_time_augmentation(run):
    run_dir, package = run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert TTA_TEXT in summary["protocol"]["model selection"]
    assert json.loads((run_dir / "fold_0" / "metrics.json").read_text())["tta"] is True
    assert "Test-time augmentation (`eval.tta`)" in (package / "MODEL_CARD.md").read_text()


def test_tta_is_a_result_key_that_keeps_old_hashes(tmp_path, make_config):
    root = make_synthetic_busi(tmp_path / "data", n_per_class=2, size=32, seed=1)
    plain = make_config(root, tmp_path, {"experiment.name": "h"}).model_dump(mode="json")
    with_tta = make_config(root, tmp_path, {"experiment.name": "h", "eval.tta": True}).model_dump(mode="json")
    assert result_diff(plain, with_tta) == ["eval.tta: False -> True"]  # a run cannot resume with it changed
    old = yaml.safe_load(yaml.safe_dump(plain))
    del old["eval"]["tta"]  # a config saved before the key existed
    assert config_hash(old) == config_hash(plain) != config_hash(with_tta)
    assert result_diff(old, plain) == []
    # the rest of eval still changes no result
    other = make_config(root, tmp_path, {"experiment.name": "h", "eval.bootstrap": 7}).model_dump(mode="json")
    assert result_diff(plain, other) == [] and config_hash(other) == config_hash(plain)
