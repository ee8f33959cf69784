"""write_report on a fake run folder: 3 finished folds, one unfinished, hostile class and experiment names."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medsg.core.errors import ConfigError, DataError
from medsg.metrics import HEADLINE, classification_metrics
from medsg.report import write_report
from medsg.report.aggregate import build_summary, load_run
from medsg.report.protocol import protocol

EVIL = "<script>alert('x')</script>"
CLASSES = ["benign", f"mal{EVIL}", "normal $|x"]
DONE_FOLDS = (0, 1, 2)


def _fold_predictions(fold: int, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(fold)
    y = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": [f"f{fold}_{i:03d}" for i in range(n)], "fold": fold, "y_true": y})
    frame["y_pred"] = probs.argmax(axis=1)
    for c, name in enumerate(CLASSES):
        frame[f"p_{name}"] = probs[:, c]
    return frame


def _make_run(root: Path) -> Path:
    run = root / "runs" / "exp"
    run.mkdir(parents=True)
    config = {
        "experiment": {"name": f"exp{EVIL}", "seed": 7},
        "data": {
            "adapter": "busi",
            "root": "/data/busi",
            "audit": {"conflicts": "drop", "near_dup_threshold": 40},
        },
        "splits": {
            "k": 4,
            "seed": 0,
            "grouping": "group",
            "file": "data_splits/busi_4fold_seed0.json",
            "inner_val_fraction": 0.15,
        },
        "model": {"name": "sgformer_tiny", "pretrained": "/weights/sgformer.pth"},
        "train": {"selection": "inner_val", "epochs": 3},
        "provenance": {"medsg": "0.1.0", "torch": "2.x", "git": "abc1234"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for fold in DONE_FOLDS:
        fold_dir = run / f"fold_{fold}"
        fold_dir.mkdir()
        preds = _fold_predictions(fold)
        preds.to_csv(fold_dir / "predictions.csv", index=False)
        metrics = classification_metrics(preds["y_true"].to_numpy(), preds.iloc[:, 4:].to_numpy(), CLASSES)
        metrics |= {"fold": fold, "n_test": len(preds), "selection": "inner_val", "best_epoch": 2}
        (fold_dir / "metrics.json").write_text(json.dumps(metrics))
        history = pd.DataFrame(
            {
                "epoch": [1, 2, 3],
                "lr": [1e-3, 5e-4, 1e-4],
                "train_loss": [1.1, 0.8, 0.6],
                "val_loss": [1.0, 0.9, 0.95],
                "val_accuracy": [0.5, 0.6, 0.58],
                "val_balanced_accuracy": [0.45, 0.6, 0.55],
                "val_macro_auroc": [0.6, 0.7, 0.7],
                "time_s": [1.0, 1.0, 1.0],
            }
        )
        history.to_csv(fold_dir / "history.csv", index=False)
        (fold_dir / "DONE").write_text("")
    (run / "fold_3").mkdir()  # started, not finished: must be reported as missing
    _fold_predictions(3).to_csv(run / "fold_3" / "predictions.csv", index=False)
    _write_data_files(run)
    return run


def _write_data_files(run: Path) -> None:
    """audit.json (163 images: 1 broken, 2 in conflict), manifest.csv (the 160 kept), splits.json."""
    kept = [f"f{fold}_{i:03d}" for fold in range(4) for i in range(40)]
    problem = {"id": "broken.png", "role": "image", "severity": "error", "kind": "corrupt"}
    warning = {"id": kept[0], "role": "mask", "severity": "warning", "kind": "missing_mask"}
    audit = {
        "n_images": 163,
        "problems": [problem, warning],
        "conflicts": [{"ids": ["x (1)", "y (1)"], "labels": ["x", "y"], "kind": "exact"}],
        "near_dup_threshold": 40,
        "min_correlation": 0.95,
    }
    (run / "audit.json").write_text(json.dumps(audit))
    pd.DataFrame({"id": kept, "path": "", "label": 0}).to_csv(run / "manifest.csv", index=False)
    header = {"dataset": "busi", "grouping": "group", "grouping_description": f"duplicate clusters{EVIL}"}
    (run / "splits.json").write_text(json.dumps({"header": header, "folds": []}))


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img_src: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = _make_run(root)
    html_path = write_report(run, root / "reports" / "exp", n_bootstrap=200, seed=0)
    return run, root / "reports" / "exp", html_path


def test_files_written(report):
    run, report_dir, html_path = report
    assert html_path == report_dir / "report.html"
    for path in (run / "summary.json", run / "oof_predictions.csv", report_dir / "report.md", html_path):
        assert path.stat().st_size > 0, path
    # the report folder carries what recomputes it
    assert (report_dir / "summary.json").read_text() == (run / "summary.json").read_text()
    assert (report_dir / "oof_predictions.csv").read_text() == (run / "oof_predictions.csv").read_text()
    names = {p.name for p in (report_dir / "figures").glob("*.png")}
    assert names == {"confusion_matrix.png", "roc_curves.png", "reliability.png", "training_curves.png"}
    for name in names:
        assert (report_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_folds_mean_and_ci(report):
    run, _, _ = report
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds_included"] == [0, 1, 2]
    assert summary["folds_missing"] == [3]
    assert len(summary["per_fold"]) == 3
    fold_files = [json.loads((run / f"fold_{k}" / "metrics.json").read_text()) for k in DONE_FOLDS]
    for key in HEADLINE:
        expected = [m[key] for m in fold_files]
        assert [m[key] for m in summary["per_fold"]] == pytest.approx(expected), key
        assert summary["mean_sd"][key]["mean"] == pytest.approx(np.mean(expected)), key
        assert summary["mean_sd"][key]["sd"] == pytest.approx(np.std(expected, ddof=1)), key
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "ece", "brier"):
        ci = summary["bootstrap_ci"][key]
        assert ci["low"] <= summary["pooled"][key] <= ci["high"], key
        assert ci["low"] < ci["high"], key
    assert summary["protocol"]["model selection"].startswith("best inner-validation balanced accuracy")
    assert "outer test fold is never used" in summary["protocol"]["model selection"]
    assert summary["protocol"]["folds missing"] == "3"
    assert set(summary["pooled"]["per_class"]) == set(CLASSES)


def test_oof_has_all_rows(report):
    run, _, _ = report
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 3 * 40
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    assert oof["id"].is_unique


def test_html_self_contained_and_escaped(report):
    _, _, html_path = report
    text = html_path.read_text()
    parser = _Collector()
    parser.feed(text)
    assert parser.tags.count("script") == 0
    assert EVIL not in text
    assert "&lt;script&gt;" in text
    assert len(parser.img_src) == 4
    assert all(src.startswith("data:image/png;base64,") for src in parser.img_src)
    assert "http://" not in text and "https://" not in text
    assert "abc1234" in text  # git hash from provenance


def test_markdown_tables(report):
    _, report_dir, _ = report
    md = (report_dir / "report.md").read_text()
    assert EVIL not in md
    for label in ("| 0 |", "| 1 |", "| 2 |", "| Mean ± SD |", "| Pooled OOF [95% CI] |"):
        assert label in md, label
    assert "normal $\\|x" in md  # the pipe in a class name must not split the table row
    assert "![Reliability diagram (pooled OOF)](figures/reliability.png)" in md
    assert "best inner-validation balanced accuracy" in md


def test_protocol_states_audit_policy_drops_and_grouping(report):
    run, report_dir, html_path = report
    proto = json.loads((run / "summary.json").read_text())["protocol"]
    assert proto["audit policy"] == (
        "conflicts drop; near duplicates: dHash-256 distance <= 40 bits and thumbnail correlation >= 0.95"
    )
    assert proto["images dropped by the audit policy"] == (
        "3 of 163 (broken.png, x (1), y (1)); counted as the audited images minus those the run kept"
    )
    assert proto["inner validation fraction"] == "0.15"
    assert proto["groups kept together"] == f"duplicate clusters{EVIL}"  # from the split header
    md, html = (report_dir / "report.md").read_text(), html_path.read_text()
    assert "**images dropped by the audit policy**: 3 of 163" in md
    assert "duplicate clusters&lt;script&gt;" in html and "inner validation fraction" in html


def test_protocol_without_data_files_derives_or_says_unknown(tmp_path):
    run = _make_run(tmp_path)
    for name in ("manifest.csv", "audit.json"):
        (run / name).unlink()
    (run / "splits.json").write_text("{not json")  # unreadable: ignored, never fatal for a report
    proto = protocol(load_run(run))
    assert proto["images dropped by the audit policy"] == "unknown"
    assert proto["groups kept together"].startswith("duplicate clusters from the audit")
    assert proto["groups kept together"].endswith(
        "(from how the runner groups this dataset; the split file does not describe its groups)"
    )
    assert proto["audit policy"].startswith("conflicts drop; near duplicates: dHash-256 distance <= 40 bits")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["adapter"], config["splits"]["grouping"] = "isic2018", "group"
    del config["data"]["audit"], config["splits"]["inner_val_fraction"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proto = protocol(load_run(run))
    assert proto["groups kept together"].startswith("lesion_id")
    # config.yaml is read with the current schema: keys it lacks take their defaults, as a run would
    assert proto["audit policy"].startswith(
        "conflicts drop; near duplicates: dHash-256 distance <= 40 bits and thumbnail correlation >= 0.95"
    )
    assert proto["inner validation fraction"] == "0.15"
    config["splits"]["grouping"] = "patient_id"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "'patient_id'" in protocol(load_run(run))["groups kept together"]


def test_dropped_images_from_audit_alone(tmp_path):
    run = _make_run(tmp_path)
    (run / "manifest.csv").unlink()
    assert protocol(load_run(run))["images dropped by the audit policy"] == (
        "3 of 163 (broken.png, x (1), y (1)); counted as the images the policy drops, from the audit record"
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["audit"]["conflicts"] = "keep"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert protocol(load_run(run))["images dropped by the audit policy"] == (
        "1 of 163 (broken.png); counted as the images the policy drops, from the audit record"
    )


def test_missing_config_is_unknown_and_no_done_raises(tmp_path):
    run = _make_run(tmp_path)
    (run / "config.yaml").unlink()
    write_report(run, tmp_path / "r", n_bootstrap=20)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"]["model selection"] == "unknown"
    assert summary["folds_missing"] == [3]  # inferred from the fold folders present
    for fold in DONE_FOLDS:
        (run / f"fold_{fold}" / "DONE").unlink()
    with pytest.raises(FileNotFoundError, match="no finished fold"):
        write_report(run, tmp_path / "r")


def test_overlapping_folds_raise(tmp_path):
    run = _make_run(tmp_path)
    _fold_predictions(0).assign(fold=1).to_csv(run / "fold_1" / "predictions.csv", index=False)
    with pytest.raises(DataError, match="more than one fold"):
        write_report(run, tmp_path / "r", n_bootstrap=20)


def test_class_absent_from_every_fold(tmp_path):
    run = _make_run(tmp_path)
    for fold in DONE_FOLDS:
        path = run / f"fold_{fold}" / "predictions.csv"
        preds = pd.read_csv(path)
        preds.loc[preds["y_true"] == 2, "y_true"] = 0
        preds.to_csv(path, index=False)
    write_report(run, tmp_path / "r", n_bootstrap=50)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pooled"]["per_class"][CLASSES[2]]["auroc"] is None
    assert summary["pooled"]["macro_auroc"] is not None
    assert any("absent" in note for note in summary["notes"])
    assert "normal $\\|x | 0 |" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"name": "sgformer_tiny", "pretrained": None}, "none (trained from scratch)"),
        ({"name": "sgformer_tiny", "pretrained": ""}, "none (trained from scratch)"),
        ({"name": "sgformer_tiny"}, "none (trained from scratch)"),  # absent: the schema's default (null)
        ({"name": "sgformer_tiny", "pretrained": "/w/sgformer_s.pth"}, "/w/sgformer_s.pth"),
    ],
)
def test_pretrained_null_is_from_scratch(tmp_path, model, expected):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = model
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert protocol(load_run(run))["pretrained weights"] == expected


def test_report_says_trained_from_scratch(tmp_path):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["pretrained"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    html_path = write_report(run, tmp_path / "r", n_bootstrap=20)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"]["pretrained weights"] == "none (trained from scratch)"
    assert summary["protocol"]["epochs"] == "3"
    assert "none (trained from scratch)" in html_path.read_text()
    assert "**pretrained weights**: none (trained from scratch)" in (tmp_path / "r" / "report.md").read_text()


def test_invalid_saved_config_names_the_file_and_key(tmp_path):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = None
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"config\.yaml: train\.epochs"):
        write_report(run, tmp_path / "r", n_bootstrap=20)
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_unreadable_fold_csv_names_the_file(tmp_path):
    run = _make_run(tmp_path)
    (run / "fold_1" / "history.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"fold_1.history\.csv.*re-run fold 1"):
        write_report(run, tmp_path / "r", n_bootstrap=20)


def _definitions_in_both(summary: dict, md: str, html_text: str) -> None:
    import html as html_lib

    from medsg.report.tables import md_escape

    for text in summary["definitions"].values():
        assert md_escape(text) in md, text
        assert html_lib.escape(text) in html_text, text


def test_report_content_a_reader_needs(report):
    run, report_dir, html_path = report
    summary = json.loads((run / "summary.json").read_text())
    md, html_text = (report_dir / "report.md").read_text(), html_path.read_text()
    # recipe read from config.yaml
    recipe = {r["item"]: r["value"] for r in summary["recipe"]}
    assert recipe["model"] == "sgformer_tiny" and recipe["pretrained weights"] == "/weights/sgformer.pth"
    assert "horizontal flip" in recipe["augmentations (training only)"]
    assert "## Training recipe" in md and "<h2>Training recipe</h2>" in html_text
    # selected epoch per fold, the majority-class baseline as a row
    assert "| Selected epoch |" in md and "| 0 | 40 | 2 |" in md
    y = pd.concat([_fold_predictions(f) for f in DONE_FOLDS])["y_true"]
    assert summary["baseline"]["balanced_accuracy"] == pytest.approx(1 / 3)
    assert summary["baseline"]["accuracy"] == pytest.approx(y.value_counts().max() / len(y))
    assert "| Majority-class baseline | 120 |" in md and "Majority-class baseline" in html_text
    # pooled figures combine k models; selection rule in words, the same sentence as metrics.json
    assert "combine the predictions of k different models" in md
    assert "best inner-validation balanced accuracy (tie-break: lower val loss)" in md
    # per-class sensitivity with CIs and the worst confusions in a sentence
    for name in CLASSES:
        ci = summary["sensitivity_ci"][name]
        assert ci["low"] <= summary["pooled"]["per_class"][name]["sensitivity"] <= ci["high"]
    assert "Sensitivity [95% CI]" in md
    cm = np.asarray(summary["pooled"]["confusion_matrix"])
    i, j = np.unravel_index(np.argmax(cm - np.diag(np.diag(cm))), cm.shape)
    largest = f"{cm[i, j]} of {cm[i].sum()} {CLASSES[i]} predicted {CLASSES[j]}"
    assert summary["confusions"].startswith(f"Largest confusions: {largest}")
    # words, not entities or code names
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md
    assert "distance <= 40 bits" in md
    assert "[audit.json" not in md and "grouping**: group" not in md
    _definitions_in_both(summary, md, html_text)


def test_critical_class_confusions_sentence(tmp_path):
    from medsg.report.aggregate import confusion_text

    pooled = {"confusion_matrix": [[100, 5, 3], [10, 171, 28], [2, 1, 40]]}
    text = confusion_text(pooled, ["benign", "malignant", "normal"], "malignant")
    assert text == (
        "Missed malignant (the clinically worst errors): 28 of 209 malignant predicted normal; "
        "10 of 209 malignant predicted benign."
    )
    generic = confusion_text(pooled, ["a", "b", "c"], None)
    assert generic.startswith("Largest confusions: 28 of 209 b predicted c; 10 of 209 b predicted a")


def test_synthetic_data_said_at_the_top(tmp_path):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["synthetic"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    html_path = write_report(run, tmp_path / "r", n_bootstrap=20)
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.split("\n")[2].startswith("> **Synthetic data:")
    assert html_path.read_text().index("Synthetic data:") < html_path.read_text().index("<h2>Protocol")
    plain = _make_run(tmp_path / "plain")
    write_report(plain, tmp_path / "r2", n_bootstrap=20)
    assert "Synthetic data" not in (tmp_path / "r2" / "report.md").read_text()


def test_smaller_fold_says_why_and_absolute_root_is_hidden(tmp_path):
    run = _make_run(tmp_path)
    split = json.loads((run / "splits.json").read_text())
    folds = [{"train": [], "val": [f"f{f}_{i:03d}" for i in range(40)]} for f in range(4)]
    path = run / "fold_1" / "predictions.csv"
    pd.read_csv(path).iloc[:-3].to_csv(
        path, index=False
    )  # f1_038, f1_039 dropped by the audit, f1_037 absent
    (run / "splits.json").write_text(json.dumps(split | {"folds": folds}))
    protocol = json.loads((run / "protocol.json").read_text()) if (run / "protocol.json").is_file() else {}
    (run / "protocol.json").write_text(json.dumps(protocol | {"dropped_ids": ["f1_038", "f1_039"]}))
    write_report(run, tmp_path / "r", n_bootstrap=20)
    summary = json.loads((run / "summary.json").read_text())
    (note,) = [n for n in summary["notes"] if n.startswith("fold 1 has")]
    assert note == (
        "fold 1 has 37 test images, 3 fewer than the largest fold; 2 of its split-file images were removed "
        "by the audit policy (f1_038, f1_039); 1 of its split-file images are not in the data the run read "
        "(the split file lists more images than the data folder holds: f1_037)"
    )
    assert "/data/busi" not in (tmp_path / "r" / "report.md").read_text()
    assert summary["protocol"]["data folder"] == "'busi' (an absolute path on the machine that ran it)"
    assert summary["protocol"]["split file"] == "data_splits/busi_4fold_seed0.json"  # relative: as given


def test_a_data_subset_is_said_once_not_fold_by_fold(tmp_path):
    """ISIC's shared copy holds 5984 of the split file's 10015 images: every fold is a subset of its split-file
    fold, which one note says, instead of singling out the folds that happen to be smaller."""
    run = _make_run(tmp_path)
    split = json.loads((run / "splits.json").read_text())
    folds = [{"train": [], "val": [f"f{f}_{i:03d}" for i in range(60)]} for f in range(4)]
    (run / "splits.json").write_text(json.dumps(split | {"folds": folds}))
    path = run / "fold_2" / "predictions.csv"
    pd.read_csv(path).iloc[:-5].to_csv(path, index=False)
    summary = build_summary(load_run(run), n_bootstrap=20)
    notes = [n for n in summary["notes"] if "fold" in n and "split" in n]
    assert len(notes) == 1, notes
    assert notes[0].startswith("the data folder holds a subset of the split file: 65 of its 240 images")
    assert "fold 0 40, fold 1 40, fold 2 35" in notes[0]


def test_calibration_that_made_scores_worse_is_said(tmp_path):
    from medsg.report.tables import calibration_text

    before = {k: {"point": 0.5, "low": 0.4, "high": 0.6} for k in ("ece", "brier", "log_loss")}
    after = before | {"brier": {"point": 0.5636, "low": 0.5, "high": 0.6}}
    per_fold = [{"fold": 0, "temperature": 1.2, "fitted": True}]
    text = calibration_text({"calibration": {"per_fold": per_fold, "before": before, "after": after}})
    assert "made the pooled test predictions worse on Brier 0.5000 -> 0.5636" in text
    same = calibration_text({"calibration": {"per_fold": per_fold, "before": before, "after": before}})
    assert "worse" not in same


def test_explanations_without_masks_define_no_scores():
    from medsg.report.explanations import explanation_text

    lines = explanation_text({"n_scored": 0, "n_without_mask_files": 1197, "definitions": {"pointing": "x"}})
    assert lines[0].startswith("No localisation scores: none of the test images has a lesion mask (1197")
    assert not any(line.startswith("pointing") or "0 test images" in line for line in lines)


def test_cluster_bootstrap_resamples_the_split_groups(tmp_path):
    """Clustered toy data (each image copied 5 times in one group): group CIs are wider than image CIs."""
    run = _make_run(tmp_path)
    manifest = pd.read_csv(run / "manifest.csv", dtype={"id": str})
    manifest["group"] = [f"g{i // 8}" for i in range(len(manifest))]  # 8 correlated images per group
    manifest.to_csv(run / "manifest.csv", index=False)
    for fold in DONE_FOLDS:  # each group of 8 shares one prediction: clustered outcomes
        path = run / f"fold_{fold}" / "predictions.csv"
        preds = pd.read_csv(path)
        first = preds.groupby(np.arange(len(preds)) // 8).transform("first")
        preds[[c for c in preds.columns if c.startswith("p_") or c == "y_true"]] = first[
            [c for c in preds.columns if c.startswith("p_") or c == "y_true"]
        ]
        preds.to_csv(path, index=False)
    write_report(run, tmp_path / "r", n_bootstrap=400)
    summary = json.loads((run / "summary.json").read_text())
    grouped = summary["bootstrap_ci"]
    assert grouped["_settings"]["unit"] == "group" and grouped["_settings"]["groups"] == 15
    assert "resampling the 15 groups the split keeps together" in summary["definitions"]["bootstrap_ci"]
    (run / "manifest.csv").write_text(manifest.drop(columns="group").to_csv(index=False))
    write_report(run, tmp_path / "r2", n_bootstrap=400)
    images = json.loads((run / "summary.json").read_text())["bootstrap_ci"]
    assert images["_settings"]["unit"] == "image"
    for key in ("balanced_accuracy", "macro_auroc", "log_loss"):
        grouped_width = grouped[key]["high"] - grouped[key]["low"]
        assert grouped_width > 1.5 * (images[key]["high"] - images[key]["low"]), key
    # the fold mean ± SD is still there, unchanged by the bootstrap unit
    assert summary["mean_sd"]["balanced_accuracy"]["sd"] > 0


def test_reliability_diagram_counts_and_honest_legend():
    from matplotlib.patches import Rectangle

    from medsg.report.figures import reliability_figure

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    ax = reliability_figure(y, probs).axes[0]
    conf = probs.max(axis=1)
    from medsg.metrics import confidence_bins

    counts = np.bincount(confidence_bins(conf, 15), minlength=15)
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(int(c) for c in counts if c)
    legend = ax.get_legend()
    handles = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))
    assert set(handles) == {"accuracy", "gap to mean confidence", "mean confidence", "perfect calibration"}
    gap_bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch() == "//"]
    assert gap_bars and all(not p.get_fill() for p in gap_bars)  # no translucent fill to mix colours
    gap = handles["gap to mean confidence"]
    assert gap.get_hatch() == "//" and not gap.get_fill()
    assert gap.get_edgecolor() == gap_bars[0].get_edgecolor()


def test_training_curves_mark_the_selected_epoch_with_the_legend_outside():
    from medsg.report.figures import training_curves_figure

    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.8, 0.7],
            "val_loss": [1.0, 0.9, 0.95],
            "val_balanced_accuracy": [0.4, 0.6, 0.5],
        }
    )
    fig = training_curves_figure({0: history, 1: history}, {0: 2, 1: 3})
    loss_ax, acc_ax = fig.axes
    stars = [
        (line.get_xdata()[0], line.get_ydata()[0])
        for line in acc_ax.get_lines()
        if line.get_marker() == "*" and len(line.get_xdata())
    ]
    assert sorted(stars) == [(2, 0.6), (3, 0.5)]
    assert loss_ax.get_legend() is None and acc_ax.get_legend() is None  # not drawn over the curves
    (legend,) = fig.legends
    assert "selected epoch" in [t.get_text() for t in legend.get_texts()]


def _finish_fold_3(run: Path) -> None:
    fold_dir = run / "fold_3"
    preds = _fold_predictions(3)
    metrics = classification_metrics(preds["y_true"].to_numpy(), preds.iloc[:, 4:].to_numpy(), CLASSES)
    (fold_dir / "metrics.json").write_text(json.dumps(metrics | {"fold": 3, "best_epoch": 1}))
    (fold_dir / "DONE").write_text("")


def test_report_folder_records_its_run_and_refuses_another(tmp_path, monkeypatch):
    from medsg.core.errors import ReportRefused
    from medsg.workflows.experiment import MADE_BY, write_run_report

    monkeypatch.chdir(tmp_path)
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"bootstrap": 20}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    # a partial run reports into its own folder, never into reports/
    partial = write_run_report(run)
    assert partial.parent == run / "report" and not (tmp_path / "reports").exists()
    assert json.loads((run / "report" / MADE_BY).read_text())["complete"] is False

    _finish_fold_3(run)
    html_path = write_run_report(run)
    out = html_path.parent
    assert out == Path("reports") / f"exp{EVIL}"
    made_by = json.loads((out / MADE_BY).read_text())
    assert made_by["run_id"] == f"exp{EVIL}" and made_by["complete"] is True
    assert len(made_by["config_hash"]) == 64 and {"report_commit", "run_commit", "clean_tree"} <= set(made_by)
    assert made_by["run_commit"] == "abc1234"
    write_run_report(run)  # the same run may rewrite its own report

    other = _make_run(tmp_path / "other")  # another run (other recipe), aimed at the same folder
    config["train"]["lr"] = 0.1
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    _finish_fold_3(other)
    with pytest.raises(ReportRefused, match=r"another run .*--out .*--force"):
        write_run_report(other, out)
    assert json.loads((out / MADE_BY).read_text()) == made_by  # untouched
    write_run_report(other, out, force=True)
    assert json.loads((out / MADE_BY).read_text())["config_hash"] != made_by["config_hash"]

    (run / "fold_3" / "DONE").unlink()  # a partial run of the right config over a complete report
    write_run_report(other, out, force=True)
    config["train"]["lr"] = 0.1
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ReportRefused, match="unfinished folds"):
        write_run_report(run, out)

    # the same config run again from another commit is another run: refused without --force
    rerun = _make_run(tmp_path / "rerun")
    (rerun / "config.yaml").write_text(yaml.safe_dump(config | {"provenance": {"git": "def5678"}}))
    _finish_fold_3(rerun)
    with pytest.raises(ReportRefused, match="same config run at commit abc1234"):
        write_run_report(rerun, out)


def test_report_made_before_origins_is_replaced_only_by_its_experiment(tmp_path):
    from medsg.core.errors import ReportRefused
    from medsg.workflows.experiment import write_run_report

    run = _make_run(tmp_path)
    _finish_fold_3(run)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.md").write_text("# old\n")
    (legacy / "summary.json").write_text(json.dumps({"experiment": "busi_cpu_sgformer_tiny"}))
    with pytest.raises(ReportRefused, match="busi_cpu_sgformer_tiny"):
        write_run_report(run, legacy)
    (legacy / "summary.json").write_text(json.dumps({"experiment": f"exp{EVIL}"}))
    assert write_run_report(run, legacy).is_file()


def test_grouping_words_come_from_old_and_new_split_headers():
    from medsg.report.run_files import grouping_description

    legacy = {
        "grouping": "lesion_id from HAM10000_metadata.csv merged with 2 audit near-duplicate cluster(s)"
    }
    assert grouping_description(legacy, "isic2018", "group") == legacy["grouping"]
    current = {"grouping": "group", "grouping_description": "duplicate clusters from the audit"}
    assert grouping_description(current, "busi", "group") == "duplicate clusters from the audit"
    assert grouping_description({"grouping": "group"}, "busi", "group").endswith(
        "(from how the runner groups this dataset; the split file does not describe its groups)"
    )


def test_near_duplicates_under_two_labels_are_named_in_the_protocol(tmp_path):
    run = _make_run(tmp_path)
    audit = json.loads((run / "audit.json").read_text())
    audit["near_conflicts"] = [{"ids": ["ISIC_1", "ISIC_2"], "labels": ["MEL", "NV"], "kind": "near"}]
    (run / "audit.json").write_text(json.dumps(audit))
    text = protocol(load_run(run))["audit policy"]
    assert "1 near-duplicate cluster(s) span two or more labels and are kept" in text
    assert "ISIC_1, ISIC_2 (MEL, NV)" in text


def test_a_run_whose_report_is_refused_fails_and_says_its_folds_are_safe(monkeypatch, tmp_path):
    """`medsg run` must exit non-zero when it could not write the report, so a script notices."""
    from medsg.core.errors import ReportRefused
    from medsg.workflows import experiment

    def refuse(run_dir, report_dir):
        raise ReportRefused(f"not writing the report into {report_dir}: it holds the report of another run")

    monkeypatch.setattr(experiment, "write_run_report", refuse)
    with pytest.raises(
        ReportRefused,
        match=r"another run \(the run itself is complete; those flags are `medsg report`'s: `medsg report .*run",
    ):
        experiment._report_after_training(tmp_path / "run", tmp_path / "report")
