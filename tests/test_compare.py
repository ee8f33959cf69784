"""medsg compare on two fabricated run folders: a known difference is found; different folds are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medsg.core.errors import DataError
from medsg.metrics import classification_metrics
from medsg.report.compare import compare_runs, write_comparison

CLASSES = ["benign", "malignant", "normal"]
N = 60  # test images per fold, 2 folds


def _ids(fold: int) -> list[str]:
    return [f"f{fold}_{i:03d}" for i in range(N)]


def _make_run(root: Path, name: str, correct_fraction: float) -> Path:
    """Fold K's image i is classified correctly when i < correct_fraction * N (0.7 on the predicted class)."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "experiment": {"name": name, "seed": 0},
        "data": {"adapter": "busi", "root": "data"},
        "model": {"name": "sgformer_tiny"},
        "splits": {"k": 2, "grouping": "group"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    folds = [{"train": _ids(1 - f), "val": _ids(f)} for f in range(2)]
    (run / "splits.json").write_text(json.dumps({"header": {}, "folds": folds}))
    ids = _ids(0) + _ids(1)
    groups = [f"g{i // 3}" for i in range(len(ids))]  # 3 images per group
    pd.DataFrame({"id": ids, "group": groups}).to_csv(run / "manifest.csv", index=False)
    for fold in range(2):
        y = np.arange(N) % 3
        pred = np.where(np.arange(N) < correct_fraction * N, y, (y + 1) % 3)
        probs = np.full((N, 3), 0.15)
        probs[np.arange(N), pred] = 0.7
        frame = pd.DataFrame({"id": _ids(fold), "fold": fold, "y_true": y, "y_pred": pred})
        for c, cls in enumerate(CLASSES):
            frame[f"p_{cls}"] = probs[:, c]
        (run / f"fold_{fold}").mkdir()
        frame.to_csv(run / f"fold_{fold}" / "predictions.csv", index=False)
        (run / f"fold_{fold}" / "DONE").write_text("")
    return run


def test_compare_finds_a_known_difference(tmp_path):
    weak = _make_run(tmp_path, "weak", 0.5)
    strong = _make_run(tmp_path, "strong", 0.9)
    html_path = write_comparison([weak, strong], tmp_path / "cmp", n_bootstrap=300, seed=0)
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert summary["n_common"] == 2 * N
    (comp,) = summary["comparisons"]
    assert (comp["a"], comp["b"]) == ("weak", "strong")
    y = np.tile(np.arange(N) % 3, 2)

    def probs(fraction: float) -> np.ndarray:
        pred = np.where(np.tile(np.arange(N), 2) < fraction * N, y, (y + 1) % 3)
        p = np.full((2 * N, 3), 0.15)
        p[np.arange(2 * N), pred] = 0.7
        return p

    want = (
        classification_metrics(y, probs(0.9), CLASSES)["balanced_accuracy"]
        - classification_metrics(y, probs(0.5), CLASSES)["balanced_accuracy"]
    )
    bal = comp["metrics"]["balanced_accuracy"]
    assert bal["difference"] == pytest.approx(want) and want > 0.3
    assert 0 < bal["low"] < bal["difference"] < bal["high"]
    assert comp["metrics"]["log_loss"]["difference"] < 0  # lower is better: the strong run
    # images 30..53 of each fold: only the strong run is right; none the other way round
    assert comp["mcnemar"] == {
        "only_a_correct": 0,
        "only_b_correct": 48,
        "p_value": pytest.approx(2 * 0.5**48),
    }
    assert "resampling the 40 groups" in summary["definitions"]["ci"]
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "strong is better" in md and "| Balanced acc. |" in md
    assert (tmp_path / "cmp" / "figures" / "differences.png").read_bytes()[:4] == b"\x89PNG"
    assert html_path.read_text().count("<img") == 1


def test_compare_uses_only_images_every_run_predicted(tmp_path):
    a = _make_run(tmp_path, "a", 0.5)
    b = _make_run(tmp_path, "b", 0.5)
    (b / "fold_1" / "DONE").unlink()  # b has finished fold 0 only
    summary = compare_runs([a, b], n_bootstrap=50)
    assert summary["n_common"] == N
    assert summary["comparisons"][0]["metrics"]["balanced_accuracy"]["difference"] == pytest.approx(0)


def test_compare_refuses_runs_on_different_splits(tmp_path):
    a = _make_run(tmp_path, "a", 0.5)
    b = _make_run(tmp_path, "b", 0.9)
    split = json.loads((b / "splits.json").read_text())
    split["folds"][0]["val"][0], split["folds"][1]["val"][0] = (
        split["folds"][1]["val"][0],
        split["folds"][0]["val"][0],
    )
    (b / "splits.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="different folds.*paired comparison is refused"):
        compare_runs([a, b], n_bootstrap=50)
    (b / "splits.json").unlink()
    with pytest.raises(DataError, match="splits.json is missing"):
        compare_runs([a, b], n_bootstrap=50)


def test_medsg_compare_command(tmp_path, monkeypatch, capsys):
    from medsg import cli

    monkeypatch.chdir(tmp_path)
    a, b = _make_run(tmp_path, "a", 0.5), _make_run(tmp_path, "b", 0.9)
    assert cli.main(["compare", str(a), str(b)]) == 0
    assert (tmp_path / "reports" / "compare_a_vs_b" / "report.html").is_file()
    assert cli.main(["compare", str(a)]) != 0  # one run: a clear error, not a traceback


def test_compare_does_not_overwrite_a_run_report(tmp_path):
    from medsg.core.errors import ReportRefused

    a, b = _make_run(tmp_path, "a", 0.5), _make_run(tmp_path, "b", 0.9)
    out = tmp_path / "reports" / "busi_cpu"
    out.mkdir(parents=True)
    (out / "report.md").write_text("# Cross-validation report\n")
    with pytest.raises(ReportRefused, match="holds another report"):
        write_comparison([a, b], out, n_bootstrap=20)
    assert (out / "report.md").read_text() == "# Cross-validation report\n"
    write_comparison([a, b], out, n_bootstrap=20, force=True)
    write_comparison([a, b], out, n_bootstrap=20)  # a comparison may replace a comparison


def test_compare_from_committed_report_folders_matches_the_run_folders(tmp_path):
    from medsg.report import write_report

    weak, strong = _make_run(tmp_path, "weak", 0.5), _make_run(tmp_path, "strong", 0.9)
    reports = []
    for run in (weak, strong):
        write_report(run, tmp_path / "reports" / run.name, n_bootstrap=50)
        reports.append(tmp_path / "reports" / run.name)
    oof = pd.read_csv(reports[0] / "oof_predictions.csv", dtype=str)
    assert oof["group"].nunique() == 40  # each image's bootstrap group travels with the report
    from_runs = compare_runs([weak, strong], n_bootstrap=200, seed=3)
    from_reports = compare_runs(reports, n_bootstrap=200, seed=3)
    assert from_reports["comparisons"] == from_runs["comparisons"]
    assert "resampling the 40 groups" in from_reports["definitions"]["ci"]
    mixed = compare_runs([weak, reports[1]], n_bootstrap=200, seed=3)
    assert mixed["comparisons"] == from_runs["comparisons"]
    # a report folder whose images sit in other folds is refused like a run folder
    moved = pd.read_csv(reports[1] / "oof_predictions.csv", dtype={"id": str, "group": str})
    moved.loc[0, "fold"] = 1 - moved.loc[0, "fold"]
    moved.to_csv(reports[1] / "oof_predictions.csv", index=False)
    with pytest.raises(DataError, match="different folds"):
        compare_runs([weak, reports[1]], n_bootstrap=50)


def test_compare_force_reaches_the_writer(tmp_path, monkeypatch):
    from medsg import cli

    monkeypatch.chdir(tmp_path)
    a, b = _make_run(tmp_path, "a", 0.5), _make_run(tmp_path, "b", 0.9)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "report.md").write_text("# Cross-validation report\n")
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) != 0
    assert cli.main(["compare", str(a), str(b), "--out", str(out), "--force"]) == 0
    assert (out / "comparison.json").is_file()


def _add_prior_shift(run: Path, decision: str) -> None:
    """Give a fabricated run the calibration files a current fold writes (T = 1, a strong prior shift) and a
    headline rule, so its headline probabilities differ from its raw ones."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config | {"eval": {"decision": decision}}))
    for fold in range(2):
        folder = run / f"fold_{fold}"
        (folder / "calibrated_predictions.csv").write_text((folder / "predictions.csv").read_text())
        shift = {"class_prior": [0.9, 0.05, 0.05], "strength": 1.0, "floor_strength": 0.5, "fitted": True}
        (folder / "calibration.json").write_text(json.dumps({"temperature": 1.0, "prior_shift": shift}))


def test_compare_scores_every_run_under_one_rule_when_asked(tmp_path, monkeypatch):
    from medsg import cli

    a, b = _make_run(tmp_path, "a", 0.5), _make_run(tmp_path, "b", 0.9)
    raw = compare_runs([a, b], n_bootstrap=50)
    _add_prior_shift(b, "prior")
    own = compare_runs([a, b], n_bootstrap=50)
    assert [r["decision"] for r in own["runs"]] == ["balanced", "prior"]
    assert own["comparisons"] != raw["comparisons"]  # b's headline is its shifted argmax
    one = compare_runs([a, b], n_bootstrap=50, decision="balanced")
    assert [r["decision"] for r in one["runs"]] == ["balanced", "balanced"]
    assert one["comparisons"] == raw["comparisons"] and "--decision" in one["definitions"]["decision"]
    with pytest.raises(DataError, match="cannot apply the prior rule"):
        compare_runs([a, b], n_bootstrap=50, decision="prior")  # a has no prior shift
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", str(a), str(b), "--decision", "balanced", "--out", "c"]) == 0
    assert "under the balanced rule (--decision)" in (tmp_path / "c" / "report.md").read_text()
    assert cli.main(["compare", str(a), str(b), "--decision", "majority_floor", "--out", "d"]) != 0
