"""SG-Former behaves like a timm hierarchical model: the checks timm's own model tests make (default cfg and
head, meta-device creation, TorchScript, FX forward and backward, intermediates and pruning), kept here so CI
keeps them. sgformer_tiny runs by default; the paper variants under ``-m slow``."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules

import medsg  # noqa: F401  (registers the variants)

FAST = ["sgformer_tiny"]
PAPER = [pytest.param(name, marks=pytest.mark.slow) for name in ("sgformer_s", "sgformer_m", "sgformer_b")]
VARIANTS = FAST + PAPER


def _input(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize("name", VARIANTS)
def test_default_cfg_head_and_pooling(name: str) -> None:
    model = timm.create_model(name).eval()
    cfg, x = model.pretrained_cfg, _input(model)
    with torch.no_grad():
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert features.shape[1] == model.num_features and tuple(features.shape[2:]) == cfg["pool_size"]
        assert pre.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model(x).shape == pre.shape and model.num_classes == 0
        model.reset_classifier(0, "")
        assert tuple(model(x).shape[2:]) == cfg["pool_size"]  # no pooling: the map itself
        bare = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert bare(x).shape == features.shape
    state = timm.create_model(name).state_dict()
    assert f"{cfg['classifier']}.weight" in state and f"{cfg['first_conv']}.weight" in state
    assert model.in_chans == cfg["input_size"][0]


def test_meta_device_creation_and_unknown_arguments() -> None:
    model = timm.create_model("sgformer_tiny", device="meta", dtype=torch.float32)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    features = model.eval().forward_features(torch.randn(1, 3, 224, 224, device="meta"))  # timm's cfg test
    assert features.device.type == "meta" and features.shape == (1, model.num_features, 7, 7)
    with pytest.raises(TypeError):
        timm.create_model("sgformer_tiny", not_a_model_arg=1)
    model = timm.create_model("sgformer_tiny", dtype=torch.float64).eval()
    model.reset_classifier(5)
    assert model.head.weight.dtype == torch.float64 and not model.head.training  # the parent's dtype and mode
    x = _input(model)
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16  # no stale float32 cache after a dtype change


@pytest.mark.parametrize("name", VARIANTS)
def test_torchscript_matches_eager(name: str) -> None:
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def _fx(model: torch.nn.Module, train: bool) -> torch.nn.Module:
    """The FX graph module of ``model`` traced the way timm's feature extraction traces (notrace leaves)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kwargs = dict(
        leaf_modules=get_notrace_modules(),
        autowrap_functions=get_notrace_functions(),
        param_shapes_constant=True,
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=kwargs)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=kwargs,
        suppress_diff_warning=True,
    ).train(train)


@pytest.mark.parametrize("name", VARIANTS)
def test_fx_forward_backward_and_scripting(name: str) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    x = _input(model, batch=2)
    fx_eval = _fx(model, train=False)
    with torch.no_grad():
        (out,) = fx_eval(x).values()
        torch.testing.assert_close(out, model(x))
        (scripted,) = torch.jit.script(fx_eval)(x).values()
        torch.testing.assert_close(scripted, out, rtol=1e-5, atol=1e-5)
    model.train()
    fx_train = _fx(model, train=True)
    (out,) = fx_train(x).values()
    out.mean().backward()
    missing = [n for n, p in fx_train.named_parameters() if p.grad is None]
    assert out.shape == (2, 7) and not missing, missing


@pytest.mark.parametrize("name", VARIANTS)
def test_intermediates_stop_early_and_pruning(name: str) -> None:
    model = timm.create_model(name).eval()
    x = _input(model, batch=2)
    last = len(model.feature_info) - 1
    with torch.no_grad():
        expected = model(x)
        taps = model.forward_intermediates(x, intermediates_only=True)
        assert [t.shape[1] for t in taps] == [f["num_chs"] for f in model.feature_info]
        kept = copy.deepcopy(model)
        kept.prune_intermediate_layers([last], prune_head=False)
        torch.testing.assert_close(kept(x), expected)
    for i in range(last + 1):
        with torch.no_grad():
            (early,) = model.forward_intermediates(x, indices=[i], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early, taps[i])
            pruned = copy.deepcopy(model)
            indices = pruned.prune_intermediate_layers([i])
            (tap,) = pruned.forward_intermediates(x, indices=indices, intermediates_only=True)
            torch.testing.assert_close(tap, taps[i])
            torch.testing.assert_close(pruned.forward_features(x), taps[i])
        pruned.train()
        sum(
            t.sum() for t in pruned.forward_intermediates(x, indices=indices, intermediates_only=True)
        ).backward()
        unused = [n for n, p in pruned.named_parameters() if p.grad is None]
        assert not unused, f"pruned to stage {i}: unused {unused[:3]}"
    features = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        assert [f.shape for f in features(x)] == [taps[1].shape, taps[3].shape]
