"""medsg.models.checkpoint: safe loading of reference, plain, DDP and medsg checkpoints; clear failures."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import timm
import torch

import medsg  # noqa: F401
from medsg.core.errors import CheckpointError
from medsg.models import checkpoint_filter_fn, load_checkpoint
from medsg.models.sgformer import rename_reference_keys


def _tiny(num_classes: int = 3) -> torch.nn.Module:
    return timm.create_model("sgformer_tiny", num_classes=num_classes)


def _same(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def weights() -> dict:
    torch.manual_seed(0)
    return _tiny().state_dict()


@pytest.mark.parametrize(("use_ema", "key"), [(True, "state_dict_ema"), (False, "state_dict")])
def test_reference_checkpoint_ema_or_raw(use_ema: bool, key: str, shared) -> None:
    official = shared("fixtures", "sgformer_tiny_official.pth")  # CI fails if absent, local runs skip
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(official, weights_only=True)
    model = _tiny()
    report = load_checkpoint(model, official, use_ema=use_ema)
    assert report["source"] == key and report["dropped"] == [] and report["reinitialised"] == []
    assert _same(model, rename_reference_keys(raw[key]))


def test_plain_ddp_and_medsg_formats(tmp_path: Path, weights: dict) -> None:
    files = {
        "plain.pt": weights,
        "ddp.pt": {f"module.{k}": v for k, v in weights.items()},
        "medsg.pt": {"model": weights, "epoch": 4, "optimizer": {}},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        model = _tiny()
        load_checkpoint(model, tmp_path / name)
        assert _same(model, weights), name


def test_head_of_another_size_is_dropped_and_reported(tmp_path: Path, weights: dict) -> None:
    path = tmp_path / "three.pt"
    torch.save({"state_dict": weights, "args": argparse.Namespace(num_classes=3)}, path)
    model = _tiny(num_classes=5)
    fresh_head = model.head.weight.clone()
    report = load_checkpoint(model, path)
    assert report["dropped"] == ["head.weight", "head.bias"] and report["reinitialised"] == report["dropped"]
    assert torch.equal(model.head.weight, fresh_head)
    assert torch.equal(
        model.stages[2].blocks[1].attn.groupers[0].weight, weights["stages.2.blocks.1.attn.groupers.0.weight"]
    )


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path, weights: dict) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": weights, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*not a plain weights file") as info:
        load_checkpoint(_tiny(), path)
    assert not marker.exists()
    assert "GLOBAL" in str(info.value) and "weights_only set to False" not in str(
        info.value
    )  # never that advice


def test_wrapper_prefixes_are_stripped_in_any_nesting() -> None:
    from medsg.models.checkpoint import _strip_prefixes

    keys = ["_orig_mod.module.head.weight", "module._orig_mod.head.bias", "module.norm.weight", "stem.weight"]
    assert list(_strip_prefixes(dict.fromkeys(keys))) == [
        "head.weight",
        "head.bias",
        "norm.weight",
        "stem.weight",
    ]


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(_tiny(), junk)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(_tiny(), tmp_path / "nope.pth")


def test_mismatches_fail_naming_the_keys(tmp_path: Path, weights: dict) -> None:
    cases = {
        "missing": {k: v for k, v in weights.items() if k != "stages.1.blocks.0.attn.q1.weight"},
        "unexpected": dict(weights, **{"extra.layer.weight": torch.zeros(1)}),
        "shape": dict(weights, **{"stages.0.blocks.0.mlp.fc1.weight": torch.zeros(64, 16)}),
    }
    names = {
        "missing": "stages.1.blocks.0.attn.q1.weight",
        "unexpected": "extra.layer.weight",
        "shape": "stages.0.blocks.0.mlp.fc1",
    }
    for case, state in cases.items():
        path = tmp_path / f"{case}.pt"
        torch.save(state, path)
        with pytest.raises(CheckpointError, match=names[case]):
            load_checkpoint(_tiny(), path)
    other_variant = timm.create_model("sgformer_tiny", num_classes=3, mlp_ratios=(4, 4, 4, 4))
    torch.save(other_variant.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(_tiny(), tmp_path / "wide.pt")


def test_filter_fn_strips_prefixes_and_mismatched_head(weights: dict) -> None:
    wrapped = {f"module.{k}": v for k, v in weights.items()}
    out = checkpoint_filter_fn(wrapped, _tiny(num_classes=10))
    assert "head.weight" not in out and "pos_embed" in out and not any(k.startswith("module.") for k in out)


def test_namespace_is_allowed_only_inside_the_loader(tmp_path: Path, weights: dict) -> None:
    """Importing medsg must not widen torch.load(weights_only=True) for the whole process."""
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": weights, "args": argparse.Namespace(num_classes=3)}, path)
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)
    assert load_checkpoint(_tiny(), path)["source"] == "state_dict"
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


def test_checkpoints_with_the_flat_reference_names_still_load(tmp_path: Path, weights: dict) -> None:
    """Fold checkpoints and packages saved before ``stages`` (the released names) load by every path:
    timm's filter, medsg's loader, and a plain load_state_dict (the pre-hook; a run resumes without a filter)."""
    from reference_keys import to_reference_keys

    flat = to_reference_keys(weights)
    assert "block3.1.attn.f1.weight" in flat and "patch_embed1.conv.0.c.weight" in flat
    model = _tiny()
    model.load_state_dict(flat)
    assert _same(model, weights)
    wrapped = torch.nn.Sequential(_tiny())  # a prefix ("0.") in front of the flat names
    wrapped.load_state_dict({f"0.{k}": v for k, v in flat.items()})
    assert _same(wrapped[0], weights)
    torch.save({"state_dict": flat}, tmp_path / "flat.pt")
    model = _tiny()
    assert load_checkpoint(model, tmp_path / "flat.pt")["dropped"] == []
    assert _same(model, weights)
    assert set(checkpoint_filter_fn(flat, _tiny())) == set(weights)


@pytest.mark.parametrize("kind", ["text", "list", "no matching key", "another architecture"])
def test_a_pretrained_file_that_does_not_fit_is_refused_before_timm_loads_it_leniently(tmp_path, kind):
    """timm would log the missing keys and train from random weights under a report naming the file."""
    import timm

    from medsg.core.errors import ConfigError
    from medsg.train.model import check_weights_fit

    path = tmp_path / "weights.pth"
    if kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "no matching key":
        torch.save({"foo": torch.zeros(3)}, path)
    else:
        torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ConfigError, match=r"model.pretrained: .*weights.pth"):
        check_weights_fit("mobilenetv3_small_100", 64, path)
    good = tmp_path / "good.pth"  # the same architecture, another head: accepted (the head is replaced)
    torch.save(timm.create_model("mobilenetv3_small_100", num_classes=7).state_dict(), good)
    before = torch.get_rng_state()
    check_weights_fit("mobilenetv3_small_100", 64, good)
    assert torch.equal(torch.get_rng_state(), before)  # the run's model initialises as without the check
    older = tmp_path / "older.pth"  # files from before BatchNorm counted its batches lack those entries
    weights = timm.create_model("mobilenetv3_small_100").state_dict()
    torch.save({k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}, older)
    check_weights_fit("mobilenetv3_small_100", 64, older)


def test_a_vit_file_made_at_another_input_size_is_not_refused(tmp_path):
    """timm resizes the position embedding when it loads; the check compares names, not shapes."""
    import timm

    from medsg.train.model import check_weights_fit

    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    check_weights_fit("vit_tiny_patch16_224", 192, path)
