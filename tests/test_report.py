"""write_report on a fake run folder: 3 finished folds, one unfinished, hostile class and experiment names."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medsg.errors import DataError
from medsg.metrics import HEADLINE, classification_metrics
from medsg.report import write_report
from medsg.report.aggregate import load_run, protocol

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
    assert summary["protocol"]["model selection"].startswith("checkpoint chosen on an inner validation split")
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
    assert "inner validation split" in md


def test_protocol_states_audit_policy_drops_and_grouping(report):
    run, report_dir, html_path = report
    proto = json.loads((run / "summary.json").read_text())["protocol"]
    assert proto["audit policy"] == (
        "conflicts drop; near duplicates: dHash-256 distance <= 40 bits and thumbnail correlation >= 0.95"
    )
    assert proto["images dropped by the audit policy"] == (
        "3 of 163 (broken.png, x (1), y (1)) [audit.json vs manifest.csv]"
    )
    assert proto["inner validation fraction"] == "0.15"
    assert proto["grouping description"] == f"duplicate clusters{EVIL}"  # from the split header
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
    assert proto["grouping description"].startswith("duplicate clusters from the audit")
    assert proto["grouping description"].endswith("(derived from data.adapter)")
    assert proto["audit policy"].startswith("conflicts drop; near duplicates: dHash-256 distance <= 40 bits")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["adapter"], config["splits"]["grouping"] = "isic2018", "group"
    del config["data"]["audit"], config["splits"]["inner_val_fraction"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proto = protocol(load_run(run))
    assert proto["grouping description"].startswith("lesion_id")
    assert proto["audit policy"] == "conflicts unknown; near duplicates: dHash-256 distance <= unknown bits"
    assert proto["inner validation fraction"] == "unknown"
    config["splits"]["grouping"] = "patient_id"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "'patient_id'" in protocol(load_run(run))["grouping description"]


def test_dropped_images_from_audit_alone(tmp_path):
    run = _make_run(tmp_path)
    (run / "manifest.csv").unlink()
    assert protocol(load_run(run))["images dropped by the audit policy"] == (
        "3 of 163 (broken.png, x (1), y (1)) [audit.json, by the policy]"
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["audit"]["conflicts"] = "keep"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert protocol(load_run(run))["images dropped by the audit policy"] == (
        "1 of 163 (broken.png) [audit.json, by the policy]"
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
        ({"name": "sgformer_tiny"}, "unknown"),
        (None, "unknown"),
        ({"name": "sgformer_tiny", "pretrained": "/w/sgformer_s.pth"}, "/w/sgformer_s.pth"),
    ],
)
def test_pretrained_null_is_from_scratch_absent_is_unknown(tmp_path, model, expected):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"] = model
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert protocol(load_run(run))["pretrained weights"] == expected


def test_report_says_trained_from_scratch(tmp_path):
    run = _make_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["pretrained"] = None
    config["train"]["epochs"] = None  # null where null means nothing stays unknown
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    html_path = write_report(run, tmp_path / "r", n_bootstrap=20)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"]["pretrained weights"] == "none (trained from scratch)"
    assert summary["protocol"]["epochs"] == "unknown"
    assert "none (trained from scratch)" in html_path.read_text()
    assert "**pretrained weights**: none (trained from scratch)" in (tmp_path / "r" / "report.md").read_text()


def test_unreadable_fold_csv_names_the_file(tmp_path):
    run = _make_run(tmp_path)
    (run / "fold_1" / "history.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"fold_1.history\.csv.*re-run fold 1"):
        write_report(run, tmp_path / "r", n_bootstrap=20)
