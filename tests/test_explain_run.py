"""Explanations made by a run (each fold, its own test cases) and by ``medsg explain`` on a finished run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from medsg.data.transforms import mask_union
from medsg.demo import make_synthetic_busi
from medsg.explain import pick_cases, significance_maps
from medsg.explain.cases import BASELINES, Case, ExplainSettings, case_maps, safe_name
from medsg.models.checkpoint import select_state_dict
from medsg.train.model import build_model
from medsg.train.state import load_training_checkpoint
from medsg.workflows.experiment import run_experiment, write_run_report
from medsg.workflows.explain import ExplainRequest, explain_run
from medsg.workflows.prepare import ManifestFolds, prepare_data

SCORED_MAPS = {
    "significance",
    "significance_stage1",
    "significance_stage2",
    "significance_stage3",
    "gradcam",
    "gradcam++",
    "gradcam_true",
    "gradcam++_true",
    *BASELINES,
}


XAI = {  # sgformer_tiny from scratch, every image in training, explanations with a short deletion curve
    "experiment.name": "xai",
    "splits.inner_val_fraction": 0.0,
    "model.drop_path": 0.0,
    "train.batch_size": 4,
    "train.layer_decay": None,
    "train.selection": "last_epoch",
    "explain.cases_per_fold": 2,
    "explain.deletion_steps": 4,
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, make_config):
    out = tmp_path_factory.mktemp("xai")
    root = make_synthetic_busi(out / "data", n_per_class=3, size=48, seed=4)
    cfg = make_config(root, out, XAI, model="sgformer_tiny")
    run_dir = run_experiment(cfg, quiet=True, report=False)
    return cfg, run_dir


def test_pick_cases_takes_classes_in_turn_with_sorted_ids():
    ids = ["c3", "a1", "b2", "a0", "c1", "b9"]
    labels = [2, 0, 1, 0, 2, 1]
    assert pick_cases(ids, labels, 4) == [3, 2, 4, 1]  # a0 (0), b2 (1), c1 (2), then a1 (0)
    assert pick_cases(ids, labels, 100) == [3, 2, 4, 1, 5, 0]
    assert pick_cases(ids, labels, 0) == [] and pick_cases([], [], 3) == []


@pytest.mark.e2e
def test_each_fold_scores_its_lesion_images_and_saves_review_cases(finished_run):
    cfg, run_dir = finished_run
    manifest = pd.read_csv(run_dir / "manifest.csv", dtype=str, keep_default_na=False).set_index("id")
    for fold in (0, 1):
        out = run_dir / f"fold_{fold}" / "explain"
        preds = pd.read_csv(run_dir / f"fold_{fold}" / "predictions.csv", dtype={"id": str})
        scores = pd.read_csv(out / "localization.csv", dtype={"case_id": str, "group": str})
        lesion = [i for i in preds["id"] if manifest.at[i, "label_name"] != "normal"]
        normal = [i for i in preds["id"] if manifest.at[i, "label_name"] == "normal"]
        assert sorted(set(scores["case_id"])) == sorted(lesion)  # normal images have empty masks: excluded
        stats = json.loads((out / "explain.json").read_text())
        assert stats["n_scored"] == len(lesion) and stats["n_without_lesion"] == len(normal)
        for _, rows in scores.groupby("case_id"):
            assert set(rows["map_type"]) == SCORED_MAPS
        assert scores[["pointing", "energy", "iou"]].notna().all().all()
        assert scores[["pointing", "energy", "iou"]].stack().between(0, 1).all()
        deletion = scores.set_index("map_type")["deletion_auc"]
        assert deletion.drop(["gradcam_true", "gradcam++_true"]).notna().all()
        assert deletion.loc[["gradcam_true", "gradcam++_true"]].isna().all()
        # the uniform baseline scores exactly the lesion's share of the image for pointing and energy
        uniform = scores[scores["map_type"] == "baseline_uniform"]
        np.testing.assert_allclose(uniform["pointing"], uniform["lesion_share"], rtol=1e-6)
        np.testing.assert_allclose(uniform["energy"], uniform["lesion_share"], rtol=1e-6)
        assert (scores["group"] == [manifest.at[i, "group"] for i in scores["case_id"]]).all()

        cases = json.loads((out / "cases.json").read_text())
        want = pick_cases(list(preds["id"]), preds["y_true"].tolist(), 2)
        assert [c["case_id"] for c in cases] == [preds["id"][i] for i in want]
        for case in cases:
            assert (out / case["panel"]).is_file()
            maps = out / case["maps"]
            fused = np.load(maps / "significance.npy")
            assert fused.shape == (48, 48)  # back on the original image's geometry
            assert (maps / "block1.0.npy").is_file() and (maps / "allocation_block1.1.npy").is_file()


@pytest.mark.e2e
def test_saved_maps_are_the_selected_models_maps(finished_run):
    cfg, run_dir = finished_run
    fold = run_dir / "fold_0"
    case = json.loads((fold / "explain" / "cases.json").read_text())[0]
    model = build_model(cfg, 3)
    model.load_state_dict(select_state_dict(load_training_checkpoint(fold / "checkpoint_best.pt"), True)[0])
    model.eval()
    test = ManifestFolds(cfg, prepare_data(cfg), run_dir)(0, model).test
    index = next(i for i in range(len(test)) if str(test[i]["id"]) == case["case_id"])
    x = torch.as_tensor(test[index]["image"]).as_subclass(torch.Tensor)[None].float()
    want = significance_maps(model, x)["block1.0"][0].numpy()
    saved = np.load(fold / "explain" / case["maps"] / "block1.0.npy")
    np.testing.assert_allclose(saved, want, rtol=1e-4, atol=1e-6)


@pytest.mark.e2e
def test_report_pools_the_folds_with_grouped_cis_and_a_review_page(finished_run):
    _, run_dir = finished_run
    write_run_report(run_dir)
    pooled = run_dir / "explain"
    summary = pd.read_csv(pooled / "localization_summary.csv")
    assert set(summary["map_type"]) == SCORED_MAPS
    scores = pd.read_csv(pooled / "localization.csv", dtype={"case_id": str})
    row = summary.set_index("map_type").loc["significance"]
    assert row["n_cases"] == scores["case_id"].nunique()
    assert row["pointing_low"] <= row["pointing"] <= row["pointing_high"]
    page = (pooled / "review.html").read_text(encoding="utf-8")
    assert page.count('class="card') >= 4 or page.count("data-case") >= 4
    # the report's Explanations section: the table, its definitions and a few panels, copied beside it
    report = run_dir.parents[1] / "report"
    markdown = (report / "report.md").read_text(encoding="utf-8")
    section = markdown[markdown.index("## Explanations") : markdown.index("## Definitions")]
    assert "baseline: centred Gaussian" in section and "Pointing game" in section
    assert "each with the model of its own outer fold" in section
    panels = sorted((report / "figures").glob("explanation_*.png"))
    assert 1 <= len(panels) <= 4 and all(f"figures/{p.name}" in section for p in panels)
    assert (report / "localization_summary.csv").read_text() == (
        pooled / "localization_summary.csv"
    ).read_text()
    assert "<h2>Explanations</h2>" in (report / "report.html").read_text(encoding="utf-8")


@pytest.mark.e2e
def test_medsg_explain_reruns_folds_with_a_gradient_free_subset(finished_run):
    _, run_dir = finished_run
    result = explain_run(
        run_dir, ExplainRequest(folds=(1,), cases_per_fold=1, deletion_steps=0, gradient_free_cases=2)
    )
    assert result["gradient_free_cases"] == 2
    scores = pd.read_csv(run_dir / "explain" / "localization.csv", dtype={"case_id": str})
    assert set(scores["fold"]) == {1}
    free = scores[scores["map_type"] == "scorecam"]
    assert 0 < len(free) <= 2
    assert scores["deletion_auc"].isna().all()
    cases = json.loads((run_dir / "fold_1" / "explain" / "cases.json").read_text())
    assert len(cases) == 1


@pytest.mark.e2e
def test_medsg_explain_on_named_images_and_unknown_ones(finished_run):
    _, run_dir = finished_run
    manifest = pd.read_csv(run_dir / "manifest.csv", dtype=str, keep_default_na=False)
    path = manifest["path"].iloc[0]
    explain_run(run_dir, ExplainRequest(images=(path,), deletion_steps=0, gradient_free_cases=0))
    reviewed = [
        c["case_id"]
        for f in (0, 1)
        for c in json.loads((run_dir / f"fold_{f}" / "explain" / "cases.json").read_text())
    ]
    assert reviewed == [manifest["id"].iloc[0]]
    from medsg.core.errors import DataError

    with pytest.raises(DataError, match="not images of this run"):
        explain_run(run_dir, ExplainRequest(images=("/nowhere/x.png",)))


def test_true_class_cams_differ_only_for_wrong_predictions():
    torch.manual_seed(0)
    model = timm.create_model("sgformer_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    cases = [
        Case("right", "r.png", probs=tuple(np.eye(3)[pred[0]]), label=pred[0]),
        Case("wrong", "w.png", probs=tuple(np.eye(3)[pred[1]]), label=(pred[1] + 1) % 3),
    ]
    maps = case_maps(model, x, cases, ExplainSettings(cams=("gradcam",)))
    assert np.array_equal(maps[0].maps["gradcam_true"], maps[0].maps["gradcam"])
    assert not np.array_equal(maps[1].maps["gradcam_true"], maps[1].maps["gradcam"])
    assert maps[0].maps["significance"].shape == (224, 224)
    # a CNN has no significance maps or token allocation, only CAMs
    cnn = timm.create_model("test_resnet", num_classes=3).eval()
    out = case_maps(cnn, torch.randn(1, 3, 64, 64), cases[:1], ExplainSettings(cams=("gradcam",)))
    assert set(out[0].maps) == {"gradcam", "gradcam_true"} and not out[0].allocation


def test_safe_names_are_unique_and_harmless():
    a, b = safe_name("../../etc/passwd"), safe_name("..-..-etc-passwd")
    assert "/" not in a and a != b and not a.startswith(".")
    assert safe_name("benign (1)") != safe_name("benign (1) ")


def test_mask_union_of_the_synthetic_lesions(tmp_path):
    root = make_synthetic_busi(tmp_path, n_per_class=1, size=32, seed=0)
    mask = mask_union([str(root / "benign" / "benign (1)_mask.png")], (32, 32))
    assert mask.any() and not mask.all()


@pytest.mark.e2e
def test_review_cards_without_localization_score_nothing(tmp_path, make_config):
    """explain.localization: false keeps the review cards only: their few stratified picks are no
    localisation result, so no fold scores them and the run has no localisation summary."""
    root = make_synthetic_busi(tmp_path / "data", n_per_class=3, size=48, seed=4)
    keys = XAI | {"experiment.name": "review_only", "explain.localization": False, "train.epochs": 1}
    run_dir = run_experiment(
        make_config(root, tmp_path, keys, model="sgformer_tiny"), quiet=True, report=False
    )
    for fold in (0, 1):
        folder = run_dir / f"fold_{fold}" / "explain"
        assert len(json.loads((folder / "cases.json").read_text())) == 2  # the cards are there
        table = folder / "localization.csv"
        assert not table.exists() or pd.read_csv(table).empty
    assert not (run_dir / "explain" / "localization_summary.csv").exists()
