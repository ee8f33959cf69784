"""medsg.explain.significance_maps: reference parity, no leftovers, no effect on the model."""

from __future__ import annotations

import pytest
import timm
import torch

import medsg  # noqa: F401
from medsg.core.errors import InputSizeError
from medsg.explain import significance_maps
from medsg.models import SGFormer, load_checkpoint


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_maps_match_reference_fixture(shared) -> None:
    official = shared("fixtures", "sgformer_tiny_official.pth")  # CI fails if absent, local runs skip
    expected = torch.load(shared("fixtures", "sgformer_tiny_expected.pt"), weights_only=True)
    model = SGFormer(**expected["config"])
    load_checkpoint(model, official, use_ema=False)
    model.double().eval()
    maps = significance_maps(model, expected["input"])  # no torch.no_grad needed: it runs under one
    assert sorted(maps) == sorted(expected["significance"])
    for name, want in expected["significance"].items():
        assert maps[name].shape == want.shape
        assert ((maps[name] - want).abs().max() / want.abs().max()).item() <= 1e-9, name


def test_maps_are_attention_means_and_leave_nothing_behind() -> None:
    torch.manual_seed(0)
    model = timm.create_model("sgformer_tiny").eval()
    x = torch.randn(2, 3, 224, 224)
    hooks = _hooks(model)
    with torch.no_grad():
        before = model(x)
        maps = significance_maps(model, x)
        after = model(x)
    assert torch.equal(before, after)
    assert model.significance_recorder is None and _hooks(model) == hooks
    assert list(maps) == ["block1.0", "block2.0", "block3.0", "block3.2"]
    # each 7x7 window's local means sum to 1 and the global means (upsampled r*r times) to r*r
    for name, sr, side in [("block1.0", 8, 56), ("block2.0", 4, 28), ("block3.0", 2, 14)]:
        m = maps[name]
        assert m.shape == (2, side, side) and (m > 0).all() and not m.requires_grad
        total = torch.full((2,), side * side / 49 + sr * sr, dtype=m.dtype)
        assert torch.allclose(m.sum(dim=(1, 2)), total, rtol=1e-4)


def test_recorder_is_cleared_after_an_error() -> None:
    model = timm.create_model("sgformer_tiny").eval()
    with pytest.raises(InputSizeError):
        significance_maps(model, torch.randn(1, 3, 256, 256))
    assert model.significance_recorder is None


class _GradProbe(torch.nn.Module):
    """Wraps a model and notes whether autograd was on during its forward (no hooks involved)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.grad_enabled = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.inner(x)


def test_runs_without_grad_and_keeps_the_callers_mode() -> None:
    probe = _GradProbe(timm.create_model("sgformer_tiny", num_classes=2)).train()
    assert torch.is_grad_enabled()
    maps = significance_maps(probe, torch.randn(1, 3, 224, 224))
    assert probe.grad_enabled == [False] and torch.is_grad_enabled()
    assert probe.training and probe.inner.training  # the caller's mode is left alone
    assert maps["block3.2"].shape == (1, 14, 14) and probe.inner.significance_recorder is None
    assert all(p.grad is None for p in probe.parameters())
    with pytest.raises(TypeError, match="SG-Former"):
        significance_maps(torch.nn.Linear(2, 2), torch.randn(1, 2))
