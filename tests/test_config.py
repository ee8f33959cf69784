"""Config: schema errors name the dotted key (with typo hints), overrides, paths, provenance, resume comparison."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from medsg.config import (
    config_from_dict,
    dump_config,
    load_config,
    read_yaml,
    resolved_config,
    result_diff,
)
from medsg.errors import ConfigError

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
    with pytest.raises(ConfigError, match=r"model\.pretrained: weights file not found: .*sgformer_s\.pth"):
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


def test_resolved_config_round_trips_with_provenance(tmp_path):
    cfg = config_from_dict(minimal(tmp_path), ["experiment.seed=7"])
    data = resolved_config(cfg)
    prov = data["provenance"]
    assert set(prov) == {"medsg", "torch", "timm", "git"}
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


@pytest.mark.parametrize("name", ["busi", "kvasir", "isic2018", "busi_cpu", "demo"])
def test_shipped_experiments_validate(name):
    cfg = load_config(REPO / "experiments" / f"{name}.yaml", check_paths=False)
    assert cfg.experiment.name
    if name in ("busi", "kvasir", "isic2018"):
        assert cfg.model.name == "sgformer_s" and cfg.model.pretrained.endswith("weights/sgformer_s.pth")
    if name in ("busi_cpu", "demo"):
        assert cfg.model.name == "sgformer_tiny" and cfg.model.pretrained is None
        assert cfg.model.img_size % 224 == 0


def test_demo_config_mirrors_the_packaged_one():
    packaged = yaml.safe_load((REPO / "medsg" / "configs" / "demo.yaml").read_text())
    mirror = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    for section in ("model", "train", "eval"):
        assert packaged[section] == mirror[section]
    assert packaged["splits"]["k"] == mirror["splits"]["k"]
