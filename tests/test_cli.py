"""The ``medsg`` command: user errors are one line and exit 2; subcommands reach their functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import medsg.cli as cli
from medsg.commands import COMMANDS, bench, info
from medsg.commands.flags import parse_options
from medsg.core.device import torch_device
from medsg.core.errors import ConfigError, DataError
from medsg.core.run_folder import ALL
from medsg.demo import make_synthetic_busi


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


def _monai_wrapped(error: Exception) -> RuntimeError:
    """What MONAI raises when a transform fails: RuntimeError("applying transform ...") from the error."""
    from monai.transforms import Compose, Lambdad

    def fail(_):
        raise error

    try:
        Compose([Lambdad(keys="image", func=fail)])({"image": 0})
    except RuntimeError as wrapped:
        return wrapped
    raise AssertionError("MONAI did not raise")


@pytest.mark.parametrize(
    "error",
    [
        DataError("image /d/benign (3).png cannot be decoded;\n re-run medsg audit"),
        FileNotFoundError("/d/benign (3).png"),
    ],
)
def test_errors_wrapped_by_monai_are_one_line_exit_2(monkeypatch, capsys, error):
    wrapped = _monai_wrapped(error)
    assert wrapped.__cause__ is error and "applying transform" in str(wrapped)

    def fail(*args, **kwargs):
        try:
            raise wrapped
        except RuntimeError as exc:  # one more layer, as a DataLoader worker or a caller would add
            raise RuntimeError("fold 0 failed") from exc

    monkeypatch.setattr("medsg.workflows.experiment.run_from_file", fail)
    assert cli.main(["run", "e.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medsg: error: " + " ".join(str(error).split())]
    with pytest.raises(RuntimeError, match="fold 0 failed"):
        cli.main(["--debug", "run", "e.yaml"])


def test_other_errors_keep_their_traceback(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("a bug, not a user error") from ValueError("inner")

    monkeypatch.setattr("medsg.workflows.experiment.run_from_file", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["run", "e.yaml"])


def test_missing_run_dir_for_report(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("medsg: error: ")


def test_run_passes_folds_and_overrides(monkeypatch, tmp_path):
    seen = {}

    def fake_run(config, overrides, folds, quiet):
        seen.update(config=config, overrides=overrides, folds=folds, quiet=quiet)
        return tmp_path

    monkeypatch.setattr("medsg.workflows.experiment.run_from_file", fake_run)
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
    # the large variants are slow on a busy CPU
    monkeypatch.setattr(info, "INFO_VARIANTS", ("sgformer_tiny",))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sgformer_tiny" in out and "M params" in out and "-> (1, 3)" in out


def test_installed_console_script_runs():
    """The entry point as installed (not the pyproject text): it resolves to cli.main and the script runs."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name="medsg")
    assert entry.load() is cli.main
    script = Path(sys.executable).parent / "medsg"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "compare" in done.stdout and "config" in done.stdout


@pytest.mark.e2e
def test_demo_quick_end_to_end(tmp_path):
    """The README's main command, run by the default test suite (--quick: 2 folds, 1 epoch, 30 images)."""
    assert cli.main(["-q", "demo", "--out", str(tmp_path), "--quick"]) == 0
    assert (tmp_path / "reports" / "demo_quick" / "report.html").is_file()
    assert (tmp_path / "runs" / "demo_quick" / "summary.json").is_file()


def test_demo_prints_report_path_and_three_line_summary(monkeypatch, tmp_path, capsys):
    from medsg.demo import DemoResult

    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    summary = {
        "protocol": {
            "experiment": "demo",
            "classes": "benign, malignant, normal",
            "cross-validation": "3-fold, split seed 0",
            "model": "sgformer_tiny",
            "epochs": "20",
        },
        "n_pooled": 72,
        "pooled": {"balanced_accuracy": 0.667, "macro_auroc": 0.81, "accuracy": 0.7},
        "bootstrap_ci": {"balanced_accuracy": {"mean": 0.66, "low": 0.55, "high": 0.78}},
        "per_fold": [{"balanced_accuracy": v} for v in (0.6, 0.7, 0.71)],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    report = tmp_path / "reports" / "demo" / "report.html"
    monkeypatch.setattr(
        "medsg.demo.run_demo", lambda out, quick, quiet: DemoResult(run_dir=run_dir, report=report)
    )
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("demo finished in ")
    assert out[1:4] == [
        "demo: 72 images (benign, malignant, normal), 3-fold, split seed 0, sgformer_tiny, 20 epochs",
        "pooled out-of-fold: balanced accuracy 0.67 (95% CI 0.55-0.78), macro AUROC 0.81, accuracy 0.70",
        "balanced accuracy per fold: 0.60, 0.70, 0.71",
    ]
    assert out[4] == f"report: {report}" and len(out) == 5


def test_demo_writes_split_files_only_inside_its_folder(monkeypatch, tmp_path):
    """The demo's split file goes to <out>/data_splits, never the repo's; <out> ignores itself in git."""
    from medsg import demo
    from medsg.workflows import experiment, prepare

    repo_splits = Path(__file__).resolve().parents[1] / "data_splits"
    before = sorted(repo_splits.iterdir()) if repo_splits.is_dir() else []

    def prepare_only(cfg, quiet=False, new_split_expected=False):  # the data half: manifest, audit, splits
        prepare.prepare_data(cfg, new_split_expected=new_split_expected)
        return cfg.run_dir

    monkeypatch.setattr(experiment, "run_experiment", prepare_only)
    monkeypatch.chdir(repo_splits.parent)  # even from the clone's root, a relative default would land here
    out = tmp_path / "demo"
    result = demo.run_demo(out, quick=True)
    assert sorted(p.name for p in (out / "data_splits").iterdir()) == ["busi_2fold_seed0.json"]
    assert (sorted(repo_splits.iterdir()) if repo_splits.is_dir() else []) == before
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    assert result.report == (out / "reports" / "demo_quick" / "report.html").resolve()


# ----------------------------------------------------------------------------------------- command modules
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.NAME)
def test_every_command_module_has_its_interface_and_help(command, capsys):
    assert isinstance(command.NAME, str) and isinstance(command.HELP, str) and command.HELP
    assert callable(command.add_arguments) and callable(command.run)
    assert cli.BY_NAME[command.NAME] is command
    parser = cli.build_parser()
    subcommands = ["model", "pipeline", "epoch"] if command is bench else [None]
    for sub in subcommands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command.NAME, *([sub] if sub else []), "--help"])
        assert done.value.code == 0
        assert f"usage: medsg {command.NAME}" in capsys.readouterr().out


def test_command_names_are_unique_and_listed_once():
    names = [c.NAME for c in COMMANDS]
    assert len(set(names)) == len(names) == 16 and names[:2] == ["run", "report"]


# The minimal command line of each command that takes --fold, --models or --device.
ARGV = {
    "run": ["run", "c.yaml"],
    "explain": ["explain", "runs/x"],
    "reproduce": ["reproduce", "reports/x"],
    "export": ["export", "runs/x", "pkg"],
    "predict": ["predict", "pkg", "a.png"],
    "evaluate": ["evaluate", "pkg", "--adapter", "busi", "--root", "d"],
    "pretrain": ["pretrain", "--out", "o"],
    "bench model": ["bench", "model"],
    "bench pipeline": ["bench", "pipeline", "--root", "d"],
    "bench epoch": ["bench", "epoch"],
}


def _parse(command: str, *flags: str):
    return cli.build_parser().parse_args([*ARGV[command], *flags])


def test_fold_is_a_fold_index_everywhere_and_all_only_where_the_final_model_counts(capsys):
    assert _parse("run", "--fold", "1", "--fold", "all").fold == [1, ALL]
    assert _parse("explain", "--fold", "1", "--fold", "2").fold == [1, 2]
    assert _parse("reproduce", "--fold", "1").fold == 1
    for command in ("explain", "reproduce"):  # no final model's test fold to explain or reproduce
        with pytest.raises(SystemExit):
            _parse(command, "--fold", "all")
    with pytest.raises(SystemExit):
        _parse("run", "--fold", "x")
    assert "is not a fold index or 'all'" in capsys.readouterr().err


def test_models_picks_a_runs_trained_models_and_model_a_timm_name():
    for command in ("export", "predict", "evaluate"):
        assert _parse(command).models is None  # the package's own default
        assert _parse(command, "--models", "folds").models == "folds"
        assert _parse(command, "--models", "all").models == "all"
    assert _parse("export", "--models", "both").models == "both"
    with pytest.raises(SystemExit):
        _parse("predict", "--models", "both")
    assert _parse("bench model").model == ["sgformer_s"]
    assert _parse("bench model", "--model", "a", "b").model == ["a", "b"]
    assert _parse("bench model", "--models", "a").model == ["a"]  # the old spelling
    for command in ("bench pipeline", "bench epoch", "pretrain"):
        assert _parse(command, "--model", "sgformer_tiny").model == "sgformer_tiny"


def test_device_is_one_flag_with_each_commands_default():
    defaults = {"predict": "cpu", "evaluate": "cpu", "pretrain": "auto", "bench model": "auto"}
    defaults |= {"bench pipeline": "auto", "bench epoch": None}  # None: the config's train.device
    for command, default in defaults.items():
        assert _parse(command).device == default
        assert _parse(command, "--device", "cuda:1").device == "cuda:1"


def test_torch_device_of_a_device_flag():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert torch_device("cuda:0") == torch.device("cuda", 0)
    else:
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            torch_device("cuda")
        with pytest.raises(
            ConfigError, match="no such CUDA GPU"
        ):  # it failed later, in torch, as a traceback
            torch_device("cuda:1")


def test_option_values_are_parsed_like_set_values():
    assert _parse("evaluate", "--option", "subset=validation", "--option", "n=3").option == [
        "subset=validation",
        "n=3",
    ]
    assert parse_options(["subset=validation", "n=3", "flag=true"]) == {
        "subset": "validation",
        "n": 3,
        "flag": True,
    }
    with pytest.raises(ConfigError, match="--option 'subset' must look like key=value"):
        parse_options(["subset"])
