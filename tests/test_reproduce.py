"""`medsg reproduce`: a fold rerun from a report's recorded config gives its numbers back, and a changed
number is caught (exact with nothing different, a tolerance only when the environment differs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsg import cli
from medsg.core.errors import ConfigError
from medsg.demo import make_synthetic_busi
from medsg.workflows.experiment import run_experiment, write_run_report
from medsg.workflows.reproduce import compare_fold, environment_differences, reproduce_fold


@pytest.fixture(scope="module")
def report(tmp_path_factory, make_config) -> Path:
    out = tmp_path_factory.mktemp("repro")
    root = make_synthetic_busi(out / "data", n_per_class=4, size=40, seed=5)
    repro = {
        "experiment.name": "repro",
        "splits.inner_val_fraction": 0.34,
        "model.drop_path": 0.0,
        "train.batch_size": 4,
        "train.layer_decay": None,
        "explain.cases_per_fold": 0,
    }
    run_dir = run_experiment(make_config(root, out, repro, model="sgformer_tiny"), quiet=True, report=False)
    write_run_report(run_dir, out / "report")
    return out / "report"


@pytest.mark.e2e
def test_a_rerun_fold_matches_the_report_to_the_last_digit(report: Path, tmp_path: Path) -> None:
    result = reproduce_fold(report, 1, out=tmp_path / "rerun")
    assert result.verdict == "exact", result.rows
    saved = json.loads((result.run_dir / "fold_1" / "reproduce.json").read_text())
    assert saved["verdict"] == "exact" and saved["fold"] == 1
    committed = json.loads((report / "summary.json").read_text())["per_fold"][1]
    assert [r["reproduced"] for r in result.rows if r["metric"] == "balanced_accuracy"] == [
        committed["balanced_accuracy"]
    ]


@pytest.mark.e2e
def test_a_changed_committed_number_is_caught(report: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "config.yaml").write_text((report / "config.yaml").read_text())
    summary = json.loads((report / "summary.json").read_text())
    summary["per_fold"][0]["balanced_accuracy"] += 0.2  # someone edited the report by hand
    (changed / "summary.json").write_text(json.dumps(summary))
    code = cli.main(
        ["reproduce", str(changed), "--fold", "0", "--out", str(tmp_path / "rerun"), "--tolerance", "0.05"]
    )
    assert code == 1


def test_verdicts() -> None:
    committed = {"balanced_accuracy": 0.6, "accuracy": 0.7, "best_epoch": 3}
    assert compare_fold(committed, dict(committed), [], 0.05)[0] == "exact"
    nudged = committed | {"balanced_accuracy": 0.6 + 1e-7}
    assert compare_fold(committed, nudged, [], 0.05)[0] == "differs"  # same everything must be exact
    assert compare_fold(committed, nudged, ["threads: 1 then, 2 now"], 0.05)[0] == "within tolerance"
    far = committed | {"balanced_accuracy": 0.7}
    assert compare_fold(committed, far, ["threads: 1 then, 2 now"], 0.05)[0] == "differs"


def test_environment_differences_are_named() -> None:
    recorded = {"git": "abc", "torch": "2.14.1", "timm": "1.0", "medsg": "0.1", "threads": 1}
    now = {
        "torch": "2.14.1",
        "timm": "1.0",
        "medsg": "0.1",
        "threads": 2,
        "machine": "x86_64",
        "accelerator": "cpu",
    }
    notes = environment_differences(recorded, now, same_code=True)
    assert any(n.startswith("threads: 1") for n in notes)
    assert any(n.startswith("machine: not recorded") for n in notes)
    assert not any(n.startswith("code") for n in notes)
    assert environment_differences(recorded, now, same_code=False)[0].startswith(
        "code: the package, split files or pins differ"
    )
    # the same code on another CPU names the CPU, not the code
    cpu = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "cpu_simd": "avx avx2 avx512f"}
    other = {"cpu": "Intel Xeon", "cpu_capability": "AVX2", "cpu_simd": "avx avx2"}
    notes = environment_differences(recorded | cpu, now | other, same_code=True)
    assert [n.split(":")[0] for n in notes if n.startswith("cpu")] == ["cpu", "cpu_capability", "cpu_simd"]
    assert "cpu: AMD EPYC when the report was made, Intel Xeon now" in notes


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="config.yaml not found"):
        reproduce_fold(tmp_path, 0, out=tmp_path / "rerun")
