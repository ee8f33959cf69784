"""Operating points of the critical class and subgroup tables, on fake run folders (no training)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medsg.config import EvalConfig
from medsg.core.errors import ConfigError
from medsg.metrics import bootstrap_ci, grouped_bootstrap_ci
from medsg.report import write_report
from medsg.report.aggregate import build_summary, load_run
from medsg.report.operating_points import (
    critical_class,
    operating_points,
    threshold_at_sensitivity,
    threshold_at_specificity,
)
from medsg.report.subgroups import age_decades, subgroup_columns

CLASSES = ["benign", "malignant", "normal"]
EVIL = "<script>alert('x')</script>"
N_TEST, N_VAL = 60, 30


def _predictions(fold: int, n: int, prefix: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": [f"{prefix}{fold}_{i:03d}" for i in range(n)], "fold": fold, "y_true": y})
    frame["y_pred"] = probs.argmax(axis=1)
    for c, name in enumerate(CLASSES):
        frame[f"p_{name}"] = probs[:, c]
    return frame


def _make_run(
    root: Path, adapter: str = "busi", eval_cfg: dict | None = None, val_folds: tuple[int, ...] = (0, 1)
) -> Path:
    """Two finished folds of 60 test images (groups of 2), val_predictions.csv for ``val_folds``, and a
    manifest with age / sex / localization, where sex 'other' is a 4-image subgroup."""
    run = root / "run"
    run.mkdir(parents=True)
    config = {
        "experiment": {"name": "clinical"},
        "data": {"adapter": adapter, "root": "data"},
        "model": {"name": "sgformer_tiny"},
        "splits": {"k": 2, "grouping": "group", "inner_val_fraction": 0.15},
    }
    if eval_cfg is not None:
        config["eval"] = eval_cfg
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for fold in (0, 1):
        fold_dir = run / f"fold_{fold}"
        fold_dir.mkdir()
        _predictions(fold, N_TEST, "t", fold).to_csv(fold_dir / "predictions.csv", index=False)
        if fold in val_folds:
            _predictions(fold, N_VAL, "v", 10 + fold).to_csv(fold_dir / "val_predictions.csv", index=False)
        (fold_dir / "DONE").write_text("")
    ids = [f"t{fold}_{i:03d}" for fold in (0, 1) for i in range(N_TEST)]
    n = len(ids)
    manifest = pd.DataFrame(
        {
            "id": ids,
            "path": "",
            "label": 0,
            "group": [f"g{i // 2}" for i in range(n)],
            "age": [["45.0", "52", "", "unknown", "67.5"][(i // 2) % 5] for i in range(n)],
            "sex": ["other" if i < 4 else ["male", "female"][(i // 2) % 2] for i in range(n)],
            "localization": [EVIL if i % 2 else "back" for i in range(n)],
        }
    )
    manifest.to_csv(run / "manifest.csv", index=False)
    return run


# ---- threshold rules: fixed on validation, applied to test -----------------------------------------


def test_threshold_rules_on_validation():
    neg = np.arange(1, 11) * 0.05  # 0.05 ... 0.50
    pos = np.array([0.6, 0.7, 0.8, 0.9])
    y, score = np.r_[np.zeros(10), np.ones(4)], np.r_[neg, pos]
    # specificity >= 0.9 allows one of the ten negatives to be called positive: the lowest such threshold is 0.5
    assert threshold_at_specificity(y, score, 0.9) == pytest.approx(0.5)
    assert threshold_at_specificity(y, score, 0.95) == pytest.approx(0.6)  # no negative may pass
    # sensitivity >= 0.75 needs 3 of 4 positives: the highest such threshold is the third-highest positive
    assert threshold_at_sensitivity(y, score, 0.75) == pytest.approx(0.7)
    assert threshold_at_sensitivity(y, score, 0.9) == pytest.approx(0.6)
    # a negative above every positive: only calling nothing positive keeps specificity 1.0
    assert threshold_at_specificity([0, 1, 0], [0.9, 0.5, 0.1], 0.99) == np.inf


def _binary(ids: str, y: list[int], p: list[float], fold: int = 0) -> pd.DataFrame:
    p = np.asarray(p)
    return pd.DataFrame(
        {"id": [f"{ids}{i}" for i in range(len(y))], "fold": fold, "y_true": y, "p_a": 1 - p, "p_b": p}
    )


def test_test_rates_use_the_validation_threshold_not_the_test_optimal_one():
    val = _binary("v", [0] * 10 + [1] * 4, [*(np.arange(1, 11) * 0.05), 0.6, 0.7, 0.8, 0.9])
    # on the test fold every negative is below 0.2, so a test-tuned threshold of 0.3 would give sensitivity 1.0
    test = _binary("t", [0] * 10 + [1] * 4, [*(np.arange(1, 11) * 0.015), 0.3, 0.45, 0.55, 0.7])
    result = operating_points({0: val}, test, ["a", "b"], "b", 0.9, 0.75, n_bootstrap=50)
    at_spec, at_sens = result["points"]
    assert at_spec["name"] == "sensitivity at specificity 0.90"
    (fold,) = at_spec["per_fold"]
    assert fold["threshold"] == pytest.approx(0.5)
    assert fold["val_specificity"] == pytest.approx(0.9) and fold["val_sensitivity"] == 1.0
    assert fold["test_sensitivity"] == pytest.approx(0.5)  # 0.55 and 0.7 reach 0.5; 0.3 and 0.45 do not
    assert fold["test_specificity"] == 1.0
    assert at_spec["pooled"]["sensitivity"]["point"] == pytest.approx(0.5)
    assert "lowest threshold on p(b) whose inner-validation specificity is >= 0.90" in at_spec["rule"]
    (fold,) = at_sens["per_fold"]
    assert fold["threshold"] == pytest.approx(0.7)  # 3 of the 4 validation positives
    assert fold["test_sensitivity"] == pytest.approx(0.25)
    assert "highest threshold on p(b) whose inner-validation sensitivity is >= 0.75" in at_sens["rule"]


def test_unreachable_specificity_calls_nothing_positive():
    val = _binary("v", [0, 1, 0], [0.9, 0.5, 0.1])
    test = _binary("t", [0, 1, 1], [0.2, 0.6, 0.99])
    result = operating_points({0: val}, test, ["a", "b"], "b", 0.99, 0.5, n_bootstrap=20)
    (fold,) = result["points"][0]["per_fold"]
    assert fold["threshold"] is None and "every test image is called negative" in fold["note"]
    assert fold["test_sensitivity"] == 0.0 and fold["test_specificity"] == 1.0
    json.dumps(result, allow_nan=False)  # no inf or NaN reaches summary.json


# ---- the critical class ------------------------------------------------------------------------------


def test_critical_class_default_per_adapter_and_explicit_errors():
    assert critical_class(None, "busi", ["benign", "malignant", "normal"])[0] == "malignant"
    assert critical_class(None, "isic2018", ["AKIEC", "BCC", "MEL", "NV"])[0] == "MEL"
    name, why = critical_class(None, "kvasir", ["polyps", "normal-cecum"])
    assert name is None and "no default critical class" in why and "eval.critical_class" in why
    name, why = critical_class(None, "busi", ["a", "b"])  # a renamed class list: the default does not apply
    assert name is None and "'malignant'" in why
    assert critical_class("b", "busi", ["a", "b"]) == ("b", "set by eval.critical_class")
    with pytest.raises(ConfigError, match=r"eval\.critical_class.*'tumour'.*\['a', 'b'\]"):
        critical_class("tumour", "busi", ["a", "b"])


def test_explicit_critical_class_not_in_classes_fails_the_report(tmp_path):
    run = _make_run(tmp_path, eval_cfg={"critical_class": "MEL"})
    with pytest.raises(ConfigError, match=r"eval\.critical_class.*benign"):
        build_summary(load_run(run), n_bootstrap=20)


def test_dataset_without_default_omits_the_section_with_a_sentence(tmp_path):
    summary = build_summary(load_run(_make_run(tmp_path, adapter="kvasir")), n_bootstrap=20)
    ops = summary["operating_points"]
    assert ops["available"] is False and ops["points"] == [] and ops["critical_class"] is None
    assert "no default critical class" in ops["text"]
    assert "sensitivity" not in summary["subgroups"]["rows"][0]  # no critical class: balanced accuracy only


# ---- the report: folds, pooled CIs from the one cluster bootstrap, both renderings -----------------


def test_report_operating_points_and_subgroups(tmp_path):
    run = _make_run(tmp_path, val_folds=(0,))  # fold 1 is an older fold: no val_predictions.csv
    html_path = write_report(run, tmp_path / "report", n_bootstrap=200, seed=3)
    summary = json.loads((run / "summary.json").read_text())
    ops = summary["operating_points"]
    defaults = EvalConfig()
    assert ops["available"] and ops["critical_class"] == "malignant"
    assert ops["folds_used"] == [0]
    (left_out,) = ops["folds_left_out"]
    assert left_out["fold"] == 1 and "no val_predictions.csv" in left_out["reason"]
    assert "Fold 1 is left out" in ops["text"] and "the busi default" in ops["text"]
    at_spec = ops["points"][0]
    assert at_spec["target"] == "specificity" and at_spec["value"] == defaults.fixed_specificity

    # the pooled figures call fold 0's test images with fold 0's validation threshold ...
    val = pd.read_csv(run / "fold_0" / "val_predictions.csv")
    threshold = threshold_at_specificity(val["y_true"] == 1, val["p_malignant"], defaults.fixed_specificity)
    assert at_spec["per_fold"][0]["threshold"] == pytest.approx(threshold)
    test = pd.read_csv(run / "fold_0" / "predictions.csv")
    positive = (test["y_true"] == 1).to_numpy()
    hit = (test["p_malignant"] >= threshold).to_numpy()
    pooled = at_spec["pooled"]
    assert pooled["n"] == N_TEST and pooled["sensitivity"]["point"] == pytest.approx(hit[positive].mean())
    # ... with CIs from the report's grouped bootstrap over the manifest's groups
    groups = [f"g{i // 2}" for i in range(N_TEST)]
    expected = grouped_bootstrap_ci(np.where(positive, hit, np.nan), groups, n_resamples=200, seed=3)
    assert pooled["sensitivity"]["unit"] == "group"
    assert pooled["sensitivity"]["n_groups"] == len({g for g, p in zip(groups, positive, strict=True) if p})
    assert (pooled["sensitivity"]["low"], pooled["sensitivity"]["high"]) == pytest.approx(
        (expected["low"], expected["high"])
    )
    assert pooled["specificity"]["low"] <= pooled["specificity"]["point"] <= pooled["specificity"]["high"]

    sub = summary["subgroups"]
    assert sub["columns"] == ["age", "sex", "localization"]  # site is absent: not a default column here
    rows = {(r["column"], r["value"]): r for r in sub["rows"]}
    assert [v for c, v in rows if c == "age"] == ["40-49", "50-59", "60-69", "unknown"]
    assert rows[("age", "unknown")]["n_images"] == 2 * N_TEST * 2 // 5  # '' and 'unknown' together
    other = rows[("sex", "other")]
    assert other["too_small"] and other["n_images"] == 4 and other["n_groups"] == 2
    assert other["balanced_accuracy"]["low"] is None and other["sensitivity"]["low"] is None
    assert other["balanced_accuracy"]["point"] is not None
    male = rows[("sex", "male")]
    assert not male["too_small"] and male["balanced_accuracy"]["low"] < male["balanced_accuracy"]["high"]
    # the subgroup CI is the report's bootstrap on the subgroup's images, resampling their groups
    oof = pd.read_csv(run / "oof_predictions.csv", dtype={"id": str})
    manifest = pd.read_csv(run / "manifest.csv", dtype=str).set_index("id").loc[oof["id"]]
    mask = (manifest["sex"] == "male").to_numpy()
    probs = oof[[f"p_{c}" for c in CLASSES]].to_numpy()[mask]
    ci = bootstrap_ci(oof["y_true"].to_numpy()[mask], probs, CLASSES, 200, 3, groups=manifest["group"][mask])
    assert male["balanced_accuracy"]["low"] == pytest.approx(ci["balanced_accuracy"]["low"])

    md, html_text = (tmp_path / "report" / "report.md").read_text(), html_path.read_text()
    for text in (md, html_text):
        assert "Operating points of the critical class" in text and "Subgroups (pooled out-of-fold)" in text
        assert "too small (" in text
    assert "whose inner-validation specificity is >= 0.90" in md
    assert "whose inner-validation specificity is &gt;= 0.90" in html_text
    assert "| sex | other | 4 | 2 |" in md
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md
    assert EVIL not in md and EVIL not in html_text

    tags: list[str] = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)
    parser.feed(html_text)
    assert "table" in tags and "script" not in tags


def test_no_fold_with_val_predictions_says_what_is_needed(tmp_path):
    summary = build_summary(load_run(_make_run(tmp_path, val_folds=())), n_bootstrap=20)
    ops = summary["operating_points"]
    assert ops["available"] is False and ops["folds_used"] == [] and len(ops["folds_left_out"]) == 2
    assert "operating points need a run with an inner validation split" in ops["text"]


def test_eval_settings_from_config(tmp_path):
    eval_cfg = {
        "critical_class": "normal",
        "fixed_specificity": 0.8,
        "fixed_sensitivity": 0.7,
        "subgroups": ["sex"],
        "min_subgroup_size": 5,
        "bootstrap": 20,
    }
    summary = build_summary(load_run(_make_run(tmp_path, eval_cfg=eval_cfg)), n_bootstrap=20)
    ops = summary["operating_points"]
    assert ops["critical_class"] == "normal" and "set by eval.critical_class" in ops["text"]
    names = [p["name"] for p in ops["points"]]
    assert names == ["sensitivity at specificity 0.80", "specificity at sensitivity 0.70"]
    sub = summary["subgroups"]
    assert sub["columns"] == ["sex"] and sub["min_subgroup_size"] == 5
    assert [r["too_small"] for r in sub["rows"]] == [False, False, True]  # female, male, other (4 < 5)


def test_missing_subgroup_column_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.subgroups.*'site'.*manifest"):
        subgroup_columns(["id", "age"], ["age", "site"])
    run = _make_run(tmp_path, eval_cfg={"subgroups": ["site"]})
    with pytest.raises(ConfigError, match=r"eval\.subgroups.*'site'"):
        build_summary(load_run(run), n_bootstrap=20)
    (run / "manifest.csv").unlink()
    with pytest.raises(ConfigError, match="no readable manifest.csv"):
        build_summary(load_run(run), n_bootstrap=20)


def test_age_decades():
    ages = pd.Series(["45.0", "5", "80", "", "unknown", "-1", None, "89.9"])
    expected = ["40-49", "0-9", "80-89", "unknown", "unknown", "unknown", "unknown", "80-89"]
    assert age_decades(ages).tolist() == expected


def test_manifest_without_subgroup_columns_says_so(tmp_path):
    run = _make_run(tmp_path)
    manifest = pd.read_csv(run / "manifest.csv", dtype=str)
    manifest[["id", "path", "label", "group"]].to_csv(run / "manifest.csv", index=False)
    sub = build_summary(load_run(run), n_bootstrap=20)["subgroups"]
    assert sub["columns"] == [] and sub["rows"] == [] and "none of the columns" in sub["text"]


def test_subgroup_sensitivity_on_few_critical_cases_is_flagged_without_a_ci():
    """A subgroup of 200 images with one MEL case: its MEL sensitivity (0 or 1) gets no CI and a flag."""
    from medsg.report.subgroups import subgroup_rows

    rng = np.random.default_rng(0)
    names = ["MEL", "NV"]
    y = np.r_[np.zeros(1, int), np.ones(199, int), np.zeros(40, int), np.ones(160, int)]
    probs = rng.dirichlet([1, 1], size=len(y))
    labels = pd.DataFrame({"sex": ["female"] * 200 + ["male"] * 200})
    rows = {
        r["value"]: r
        for r in subgroup_rows(y, probs, names, labels, critical="MEL", min_size=30, n_bootstrap=50)
    }
    female, male = rows["female"], rows["male"]
    assert not female["too_small"] and female["critical_too_small"]
    assert female["sensitivity"]["low"] is None and female["sensitivity"]["support"] == 1
    assert female["balanced_accuracy"]["low"] is not None  # the images are enough for balanced accuracy
    assert not male["critical_too_small"] and male["sensitivity"]["low"] is not None
    from medsg.report.tables import subgroup_table

    table = subgroup_table(
        {"subgroups": {"rows": list(rows.values()), "critical_class": "MEL", "min_subgroup_size": 30}}
    )
    assert table.set_index("Subgroup").loc["female", "Flag"] == "< 30 MEL cases: sensitivity without CI"
    assert table.set_index("Subgroup").loc["male", "Flag"] == ""


def test_the_operating_point_sentence_names_what_its_bootstrap_resamples():
    from medsg.report.operating_points import section_text

    def result(unit):
        point = {"pooled": {"sensitivity": {"unit": unit}}}
        return {"critical_class": "malignant", "points": [point], "folds_left_out": [], "available": True}

    assert "resampling the split's groups: those holding a malignant image" in section_text(
        result("group"), "x"
    )
    assert "resampling images: the malignant images for the sensitivity" in section_text(result("image"), "x")
