"""Config: schema errors name the dotted key (with typo hints), overrides, paths, provenance, resume comparison."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from medsg.config import (
    config_from_dict,
    dump_config,
    load_config,
    read_yaml,
    resolved_config,
    result_diff,
)
from medsg.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def minimal(root: Path) -> dict:
    return {
        "experiment": {"name": "t"},
        "data": {"adapter": "busi", "root": str(root)},
        "model": {"name": "test_vit", "img_size": 32},
    }


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_and_derived_paths(tmp_path):
    cfg = config_from_dict(minimal(tmp_path))
    assert cfg.splits.k == 5 and cfg.splits.inner_val_fraction == 0.15 and cfg.train.selection == "inner_val"
    assert cfg.split_file == Path("data_splits/busi_5fold_seed0.json")
    assert cfg.report_dir == Path("reports/t")
    assert cfg.run_dir == Path("runs/t")
    assert cfg.color_aug is False  # ultrasound default
    raw = minimal(tmp_path)
    raw["data"]["adapter"] = "isic2018"
    assert config_from_dict(raw).color_aug is True  # dermoscopy default


def test_unknown_key_suggests_the_close_one(tmp_path):
    raw = minimal(tmp_path)
    raw["train"] = {"epoch": 3}
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch - did you mean train\.epochs\?"):
        load_config(write(tmp_path / "c.yaml", raw))


def test_unknown_section_suggests(tmp_path):
    raw = minimal(tmp_path)
    raw["trian"] = {"epochs": 3}
    with pytest.raises(ConfigError, match=r"unknown key trian - did you mean train\?"):
        config_from_dict(raw)


def test_wrong_type_names_the_key(tmp_path):
    raw = minimal(tmp_path)
    raw["train"] = {"epochs": "three"}
    with pytest.raises(ConfigError, match=r"train\.epochs: .*'three'"):
        config_from_dict(raw)


def test_bad_choice_and_missing_section(tmp_path):
    raw = minimal(tmp_path)
    raw["train"] = {"selection": "test_fold"}
    with pytest.raises(ConfigError, match=r"train\.selection"):
        config_from_dict(raw)
    raw = minimal(tmp_path)
    del raw["model"]
    with pytest.raises(ConfigError, match=r"missing key model"):
        config_from_dict(raw)


def test_missing_paths_name_key_and_path(tmp_path):
    raw = minimal(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data\.root: folder not found: .*nowhere"):
        config_from_dict(raw)
    raw = minimal(tmp_path)
    raw["model"]["pretrained"] = str(tmp_path / "sgformer_s.pth")
    with pytest.raises(
        ConfigError, match=r"model\.pretrained: weights file or model folder not found: .*sgformer_s\.pth"
    ):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "absent.yaml")


def test_overrides_parse_yaml_values(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    cfg = config_from_dict(
        minimal(tmp_path),
        ["train.epochs=3", f"data.root={other}", "train.grad_clip=null", "train.ema=true", "train.lr=1e-3"],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.root == str(other.resolve())
    assert cfg.train.grad_clip is None and cfg.train.ema is True and cfg.train.lr == pytest.approx(1e-3)


def test_override_errors(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key train\.epoch in --set .*did you mean train\.epochs\?"
    ):
        config_from_dict(minimal(tmp_path), ["train.epoch=3"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        config_from_dict(minimal(tmp_path), ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        config_from_dict(minimal(tmp_path), ["train.epochs=abc"])


def test_key_value_parser_of_set_and_option():
    """One parser for ``--set`` and ``--option``: values as YAML, an empty value None, errors name the flag."""
    from medsg.config import parse_key_value

    assert parse_key_value(" train.epochs = 3", "override", "x") == ("train.epochs", 3)
    assert parse_key_value("subset=validation", "--option", "x") == ("subset", "validation")
    assert parse_key_value("a=true", "--option", "x") == ("a", True)
    assert parse_key_value("a=", "--option", "x") == ("a", None)
    assert parse_key_value("a=b=c", "--option", "x") == ("a", "b=c")
    with pytest.raises(ConfigError, match="--option 'subset' must look like key=value"):
        parse_key_value("subset", "--option", "key=value")
    with pytest.raises(ConfigError, match=r"--option a: cannot parse value '\[1' as YAML"):
        parse_key_value("a=[1", "--option", "key=value")


def test_provenance_names_the_device_the_run_uses(monkeypatch):
    """A run told to use the CPU on a GPU machine computed on the CPU: its record must say so."""
    import torch

    from medsg.core.provenance import provenance

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"GPU {index}")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert provenance("cpu")["accelerator"] == "cpu"
    assert provenance("auto")["accelerator"] == "GPU 0"
    assert provenance("cuda:1")["accelerator"] == "GPU 1"
    assert provenance("cuda:1")["world_size"] == 4
    monkeypatch.delenv("WORLD_SIZE")
    assert provenance("cpu")["world_size"] == 1


def test_resolved_config_round_trips_with_provenance(tmp_path):
    cfg = config_from_dict(minimal(tmp_path), ["experiment.seed=7"])
    data = resolved_config(cfg)
    prov = data["provenance"]
    assert set(prov) == {
        "medsg",
        "torch",
        "timm",
        "monai",
        "numpy",
        "pillow",
        "git",
        "clean_tree",
        "threads",
        "machine",
        "cpu",
        "cpu_capability",
        "cpu_simd",
        "accelerator",
        "world_size",
    }
    assert prov["cpu"] and prov["cpu_capability"]  # what `medsg reproduce` names when the CPU differs
    assert isinstance(prov["torch"], str) and prov["medsg"]
    assert prov["git"] is None or len(prov["git"]) == 40
    assert data["experiment"]["seed"] == 7
    assert data["splits"]["file"] == "data_splits/busi_5fold_seed0.json"
    loaded = yaml.safe_load(dump_config(data))
    again = config_from_dict(loaded)  # a saved config.yaml is itself a valid config
    assert result_diff(loaded, resolved_config(again)) == []


def test_audit_defaults_are_the_audit_modules_own(tmp_path):
    """A YAML without data.audit must audit exactly like ``audit_manifest`` called with its defaults."""
    import inspect

    from medsg.data import audit

    cfg = config_from_dict(minimal(tmp_path))
    params = inspect.signature(audit.audit_manifest).parameters
    assert (
        cfg.data.audit.near_dup_threshold == params["near_dup_threshold"].default == audit.NEAR_DUP_THRESHOLD
    )
    assert cfg.data.audit.min_correlation == params["min_correlation"].default == audit.MIN_CORRELATION
    cfg = config_from_dict(minimal(tmp_path), ["data.audit.min_correlation=0.9"])
    assert cfg.data.audit.min_correlation == 0.9
    with pytest.raises(ConfigError, match="near_dup_threshold"):
        config_from_dict(minimal(tmp_path), ["data.audit.near_dup_threshold=300"])


def test_a_config_saved_before_min_correlation_existed_still_resumes(tmp_path):
    saved = resolved_config(config_from_dict(minimal(tmp_path)))
    new = copy.deepcopy(saved)
    del saved["data"]["audit"]["min_correlation"]
    assert result_diff(saved, new) == []
    new["data"]["audit"]["min_correlation"] = 0.5
    assert result_diff(saved, new) == ["data.audit.min_correlation: 0.95 -> 0.5"]


def test_result_diff_ignores_io_knobs_and_flags_the_rest(tmp_path):
    saved = resolved_config(config_from_dict(minimal(tmp_path)))
    new = copy.deepcopy(saved)
    new["train"]["workers"] = 7
    new["provenance"]["git"] = "0" * 40
    new["data"]["cache"] = "none"
    assert result_diff(saved, new) == []
    new["train"]["lr"] = 1.0
    new["splits"]["k"] = 3
    diff = result_diff(saved, new)
    assert [d.split(":")[0] for d in diff] == ["splits.k", "train.lr"]


def test_every_committed_experiment_validates_and_reports_to_its_own_folder():
    """A committed recipe is a record of a run and a plan for the next: one that no longer loads (a renamed key, a
    broken base chain) could not be rerun, and two recipes with one report folder would overwrite each other's
    committed report (the demo writes to a temporary folder by design and is left out)."""
    owners: dict[Path, list[str]] = {}
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        cfg = load_config(path, check_paths=False)  # raises, naming the file and key, if it no longer loads
        if path.stem != "demo":
            owners.setdefault(cfg.report_dir, []).append(path.name)
    assert len(owners) > 20, "the committed experiments were not found"
    shared = {str(folder): names for folder, names in owners.items() if len(names) > 1}
    assert not shared, f"recipes that would write one report folder: {shared}"


@pytest.mark.parametrize("name", ["busi", "kvasir", "isic2018", "busi_cpu", "demo"])
def test_shipped_experiments_validate(name):
    cfg = load_config(REPO / "experiments" / f"{name}.yaml", check_paths=False)
    assert cfg.experiment.name
    if name in ("busi", "kvasir", "isic2018"):
        assert cfg.model.name == "sgformer_s" and cfg.model.pretrained.endswith("weights/sgformer_s.pth")
    if name in ("busi_cpu", "demo"):
        assert cfg.model.name == "sgformer_tiny" and cfg.model.pretrained is None
        assert cfg.model.img_size % 224 == 0


def test_demo_config_builds_on_the_packaged_one():
    """experiments/demo.yaml names the packaged file as its base: only the output paths differ."""
    from medsg.config import compose_yaml

    packaged = yaml.safe_load((REPO / "medsg" / "configs" / "demo.yaml").read_text())
    composed = compose_yaml(REPO / "experiments" / "demo.yaml")
    paths = {("experiment", "output_dir"), ("experiment", "report_dir"), ("splits", "file")}
    for section, key in paths:
        composed[section].pop(key)
    assert composed == packaged


def test_unknown_model_name_fails_in_the_config_check(tmp_path):
    raw = minimal(tmp_path)
    raw["model"]["name"] = "sgformer_tinny"
    with pytest.raises(
        ConfigError, match=r"model.*'sgformer_tinny' is not a timm model - did you mean sgformer_tiny"
    ):
        config_from_dict(raw, check_paths=False)
    raw["model"]["name"] = "mobilenetv3_small_050"  # any timm model is fine
    assert config_from_dict(raw, check_paths=False).model.name == "mobilenetv3_small_050"


def test_sgformer_img_size_checked_before_any_data(tmp_path):
    raw = minimal(tmp_path)
    raw["model"] = {"name": "sgformer_tiny", "img_size": 256}
    with pytest.raises(ConfigError, match=r"model.img_size.*multiple of 224"):
        config_from_dict(raw, check_paths=False)
    raw["model"]["img_size"] = 448
    assert config_from_dict(raw, check_paths=False).model.img_size == 448
    raw["model"] = {"name": "test_vit", "img_size": 32}  # other models keep their own rules
    assert config_from_dict(raw, check_paths=False).model.img_size == 32


def test_optimizer_checked_like_sched(tmp_path):
    raw = minimal(tmp_path)
    raw["train"] = {"optimizer": "adamww"}
    with pytest.raises(ConfigError, match=r"train.optimizer: .*unknown optimizer - did you mean adamw"):
        config_from_dict(raw, check_paths=False)
    raw["train"] = {"optimizer": "sgd"}
    assert config_from_dict(raw, check_paths=False).train.optimizer == "sgd"


def test_adapters_come_from_the_registry(tmp_path, monkeypatch):
    from medsg.data import manifest

    raw = minimal(tmp_path)
    raw["data"]["adapter"] = "bussi"
    with pytest.raises(ConfigError, match=r"data.adapter: .*did you mean busi"):
        config_from_dict(raw, check_paths=False)
    monkeypatch.setitem(manifest._ADAPTERS, "bussi", manifest._ADAPTERS["busi"])  # a new adapter: no 2nd list
    assert config_from_dict(raw, check_paths=False).data.adapter == "bussi"


def test_warmup_not_shorter_than_the_run_warns(tmp_path, caplog):
    raw = minimal(tmp_path)
    raw["train"] = {"epochs": 2, "warmup_epochs": 2}
    with caplog.at_level("WARNING", logger="medsg.config"):
        config_from_dict(raw, check_paths=False)
    assert "train.warmup_epochs (2) >= train.epochs (2)" in caplog.text
    caplog.clear()
    raw["train"] = {"epochs": 3, "warmup_epochs": 2}
    with caplog.at_level("WARNING", logger="medsg.config"):
        config_from_dict(raw, check_paths=False)
    assert "warmup" not in caplog.text


def test_config_yaml_keeps_data_root_as_given_and_resumes_old_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    raw = minimal(tmp_path)
    raw["data"]["root"] = "data"
    cfg = config_from_dict(raw)
    assert cfg.data.root == str(tmp_path / "data")  # the code reads an absolute path
    saved = resolved_config(cfg)
    assert saved["data"]["root"] == "data"  # config.yaml does not carry this machine's absolute path
    assert result_diff(saved, resolved_config(config_from_dict(raw))) == []
    old = copy.deepcopy(saved)
    old["data"]["root"] = str(tmp_path / "data")  # a run saved before: absolute, the same folder
    assert result_diff(old, saved) == []
    old["data"]["root"] = str(tmp_path / "elsewhere")
    assert [d.split(":")[0] for d in result_diff(old, saved)] == ["data.root"]


# experiments/busi_cpu.yaml holds only its differences from busi.yaml; this is the full file it replaced, with
# the loader in the main process since (workers: 0). The test proves the two resolve to the same config.
BUSI_CPU_FULL = """\
# BUSI on this CPU in about an hour: sgformer_tiny from scratch, 5 folds, few epochs. Numbers are far below the
# GPU recipe (experiments/busi.yaml); this run shows the whole protocol on real data, not the paper's result.
#   OMP_NUM_THREADS=2 medsg run experiments/busi_cpu.yaml
experiment:
  name: busi_cpu_sgformer_tiny
  seed: 0
  output_dir: runs
data:
  adapter: busi
  root: ../shared/data/busi
  audit:
    conflicts: drop
    near_dup_threshold: 40
  cache: memory
  color_aug: null
splits:
  k: 5
  seed: 0                            # same split file as experiments/busi.yaml
  grouping: group
  inner_val_fraction: 0.15
model:
  name: sgformer_tiny
  pretrained: null
  drop_path: 0.0
  img_size: 224                      # SG-Former serves multiples of 224 only
train:
  epochs: 25                         # ~20 s per epoch on 2 quiet cores (much more when shared): ~45 min
  batch_size: 32
  optimizer: adamw
  lr: 1.0e-3
  layer_decay: null                  # from scratch: one lr for all layers
  weight_decay: 0.05
  warmup_epochs: 1
  min_lr: 1.0e-5
  sched: cosine
  ema: false
  amp: false
  grad_clip: 1.0
  class_weighting: balanced
  sampler: none
  label_smoothing: 0.1
  selection: inner_val
  device: cpu
  workers: 0
  deterministic: true
eval:
  bootstrap: 1000
  decision: prior
explain:
  cases_per_fold: 8
"""


def _resolved(path: Path) -> dict:
    data = resolved_config(load_config(path, check_paths=False))
    data.pop("provenance")
    return data


def test_busi_cpu_as_differences_from_busi_resolves_identically(tmp_path):
    assert "base: busi.yaml" in (REPO / "experiments" / "busi_cpu.yaml").read_text()
    (tmp_path / "busi_cpu_full.yaml").write_text(BUSI_CPU_FULL)
    assert _resolved(REPO / "experiments" / "busi_cpu.yaml") == _resolved(tmp_path / "busi_cpu_full.yaml")


def test_base_merges_sections_and_null_overrides(tmp_path):
    from medsg.config import compose_yaml

    (tmp_path / "sub").mkdir()
    write(tmp_path / "a.yaml", minimal(tmp_path) | {"train": {"epochs": 9, "lr": 0.1, "layer_decay": 0.5}})
    write(tmp_path / "sub" / "b.yaml", {"base": "../a.yaml", "train": {"lr": 0.2, "layer_decay": None}})
    raw = compose_yaml(tmp_path / "sub" / "b.yaml")  # base is relative to the file naming it
    assert raw["train"] == {"epochs": 9, "lr": 0.2, "layer_decay": None}
    assert raw["model"] == minimal(tmp_path)["model"] and "base" not in raw
    cfg = load_config(tmp_path / "sub" / "b.yaml", ["train.epochs=3"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.layer_decay) == (3, 0.2, None)


def test_base_errors_name_the_file(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="base files form a loop"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match=r"c.yaml: base file not found: .*missing.yaml"):
        load_config(tmp_path / "c.yaml")


def test_medsg_config_prints_the_resolved_config(tmp_path, capsys):
    from medsg import cli

    assert cli.main(["config", str(REPO / "experiments" / "busi_cpu.yaml"), "--set", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = _resolved(REPO / "experiments" / "busi_cpu.yaml")
    expected["train"]["epochs"] = 3
    assert printed == expected


def test_mobilenetv3_baseline_differs_from_busi_cpu_only_in_its_model():
    base, cnn = (
        _resolved(REPO / "experiments" / "busi_cpu.yaml"),
        _resolved(REPO / "experiments" / "busi_cpu_mobilenetv3.yaml"),
    )
    import pandas as pd

    def flat(d: dict) -> dict:
        return pd.json_normalize(d).iloc[0].to_dict()

    a, b = flat(base), flat(cnn)
    assert {k for k in a if a[k] != b[k]} == {"experiment.name", "experiment.report_dir", "model.name"}
    assert b["model.name"] == "mobilenetv3_small_050" and b["model.pretrained"] is None


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("experiment", "seed", -1, "greater than or equal to 0"),
        ("experiment", "name", "..", "outside its own folder"),
        ("experiment", "name", "", "outside its own folder"),
        ("experiment", "name", "../b", "outside its own folder"),
        ("experiment", "name", "/tmp/b", "outside its own folder"),
        ("data", "options", {"root": "x"}, "set data.root instead"),
    ],
)
def test_values_that_would_break_a_run_late_are_refused_up_front(tmp_path, section, key, value, words):
    """A negative seed crashed the report's bootstrap after training; '' or '..' as the name wrote the run into
    (or above) the shared runs/ folder; data.options.root collided with data.root inside the adapter call."""
    raw = minimal(tmp_path)
    raw[section][key] = value
    with pytest.raises(ConfigError, match=words):
        load_config(write(tmp_path / "c.yaml", raw), check_paths=False)


def test_a_config_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("experiment:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml cannot be read .*UTF-8"):
        read_yaml(path)


def test_a_device_that_is_not_one_is_one_clear_error():
    from medsg.core.device import torch_device

    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        torch_device("gpu")
    with pytest.raises(ConfigError, match="no such CUDA GPU"):
        torch_device(f"cuda:{torch.cuda.device_count()}")
