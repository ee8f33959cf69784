"""The ``medsg`` command: user errors are one line and exit 2; subcommands reach their functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import medsg.cli as cli
from medsg.demo import make_synthetic_busi
from medsg.errors import ConfigError


def test_missing_config_is_one_line_exit_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medsg.cli", "run", str(tmp_path / "absent.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsg: error: config file not found")
    assert "Traceback" not in proc.stderr


def test_unknown_key_one_line_with_suggestion_and_debug_shows_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experiment": {"name": "x"},
                "data": {"adapter": "busi", "root": str(tmp_path)},
                "model": {"name": "test_vit"},
                "train": {"epoch": 2},
            }
        )
    )
    assert cli.main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "medsg: error: invalid config " + str(cfg) + ": unknown key train.epoch - did you mean train.epochs?"
    ]
    assert cli.main(["run", str(cfg), "--set", "train.epoch=3"]) == 2
    assert "did you mean train.epochs?" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        cli.main(["--debug", "run", str(cfg)])


def test_missing_run_dir_for_report(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("medsg: error: ")


def test_run_passes_folds_and_overrides(monkeypatch, tmp_path):
    seen = {}

    def fake_run(config, overrides, folds, quiet):
        seen.update(config=config, overrides=overrides, folds=folds, quiet=quiet)
        return tmp_path

    monkeypatch.setattr("medsg.experiment.run_from_file", fake_run)
    argv = [
        "-q",
        "run",
        "e.yaml",
        "--fold",
        "1",
        "--fold",
        "3",
        "--set",
        "train.epochs=3",
        "--set",
        "data.root=/x",
    ]
    assert cli.main(argv) == 0
    assert seen == {
        "config": "e.yaml",
        "overrides": ["train.epochs=3", "data.root=/x"],
        "folds": [1, 3],
        "quiet": True,
    }


def test_splits_and_audit_subcommands(tmp_path, capsys):
    root = make_synthetic_busi(tmp_path / "data", n_per_class=4, size=32)
    cfg = tmp_path / "c.yaml"
    split_file = tmp_path / "s" / "busi_2fold_seed0.json"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experiment": {"name": "x"},
                "data": {"adapter": "busi", "root": str(root)},
                "splits": {"k": 2, "file": str(split_file)},
                "model": {"name": "test_vit"},
            }
        )
    )
    assert cli.main(["splits", str(cfg)]) == 0
    folds = json.loads(split_file.read_text())["folds"]
    assert len(folds) == 2 and sorted(i for f in folds for i in f["val"]) == sorted(
        p.stem for p in root.glob("*/*).png")
    )
    out = tmp_path / "audit.json"
    assert cli.main(["audit", "--adapter", "busi", "--root", str(root), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n_images"] == 12


def test_info_lists_variants_with_a_forward_pass(monkeypatch, capsys):
    monkeypatch.setattr(cli, "INFO_VARIANTS", ("sgformer_tiny",))  # the large variants are slow on a busy CPU
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sgformer_tiny" in out and "M params" in out and "-> (1, 3)" in out


def test_console_script_is_declared():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'medsg = "medsg.cli:main"' in text


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    assert cli.main(["-q", "demo", "--out", str(tmp_path), "--quick"]) == 0
    assert (tmp_path / "reports" / "demo_quick" / "report.html").is_file()
    assert (tmp_path / "runs" / "demo_quick" / "summary.json").is_file()
