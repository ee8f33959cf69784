"""SG-Former: float64 parity with the reference fixtures, checkpoint compatibility and timm integration."""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

import pytest
import timm
import timm.optim
import torch
from reference_keys import to_reference_key, to_reference_keys

import medsg  # noqa: F401  (registers the timm variants)
from medsg.core.errors import CheckpointError, ConfigError, InputSizeError
from medsg.models import SGFormer, load_checkpoint, sincos_pos_embed_2d, valid_img_sizes
from medsg.models.sgformer import rename_reference_key, sgformer_tiny, sgformer_xs

TOL = 1e-9


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@functools.cache
def _load_expected(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture
def official(shared) -> Path:
    """The reference trainer's sgformer_tiny checkpoint (../shared/fixtures; CI fails if absent)."""
    return shared("fixtures", "sgformer_tiny_official.pth")


@pytest.fixture
def expected(shared, official: Path) -> dict:
    """Reference outputs for ``official`` (loaded once per session; callers must not modify it)."""
    return _load_expected(shared("fixtures", "sgformer_tiny_expected.pt"))


def _tiny(expected: dict, official: Path, use_ema: bool) -> SGFormer:
    model = SGFormer(**expected["config"])
    load_checkpoint(model, official, use_ema=use_ema)
    return model.double().eval()


@pytest.fixture
def tiny64(expected: dict, official: Path) -> SGFormer:
    return _tiny(expected, official, use_ema=False)


def _reference_format_checkpoint(path: Path, num_classes: int = 1000) -> dict:
    """A 1000-class sgformer_tiny checkpoint laid out like the reference trainer's files."""
    torch.manual_seed(1)
    raw = to_reference_keys(timm.create_model("sgformer_tiny", num_classes=num_classes).state_dict())
    ema = {k: v + 0.01 * torch.randn_like(v) for k, v in raw.items()}
    args = argparse.Namespace(model="sgformer_tiny", num_classes=num_classes, model_ema=True)
    torch.save(
        {"epoch": 3, "arch": "sgformer_tiny", "state_dict": raw, "state_dict_ema": ema, "args": args}, path
    )
    return {"state_dict": raw, "state_dict_ema": ema}


# ----------------------------------------------------------------------------------- parity (float64)
def test_logits_and_features_match_reference(expected: dict, tiny64: SGFormer) -> None:
    with torch.no_grad():
        tokens = tiny64.forward_features(expected["input"])
        assert rel_diff(tiny64.forward_head(tokens), expected["logits"]) <= TOL
        assert rel_diff(tiny64.forward_head(tokens, pre_logits=True), expected["features"]) <= TOL


def test_ema_logits_match_reference(expected: dict, official: Path) -> None:
    model = _tiny(expected, official, use_ema=True)
    with torch.no_grad():
        logits = model(expected["input"])
    assert rel_diff(logits, expected["logits_ema"]) <= TOL
    assert rel_diff(logits, expected["logits"]) > 1e-3  # EMA weights really differ from the raw ones


def test_input_gradient_matches_reference(expected: dict, tiny64: SGFormer) -> None:
    x = expected["input"].clone().requires_grad_(True)
    (tiny64(x) * expected["grad_weights"]).sum().backward()
    assert rel_diff(x.grad, expected["input_grad"]) <= TOL


def test_float32_forward_is_close(expected: dict, official: Path) -> None:
    model = SGFormer(**expected["config"]).eval()
    load_checkpoint(model, official, use_ema=False)
    with torch.no_grad():
        logits = model(expected["input"].float())
    assert rel_diff(logits, expected["logits_float32"]) <= 1e-2


# ------------------------------------------------------------------------- checkpoint compatibility
@pytest.mark.parametrize("variant", ["sgformer_s", "sgformer_m", "sgformer_b"])
def test_state_dict_keys_and_shapes_match_released_checkpoints(variant: str, shared) -> None:
    released = json.loads(shared("fixtures", "sgformer_official_keys.json").read_text())[variant]
    model = timm.create_model(variant, num_classes=1000)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    renamed = {rename_reference_key(k): list(v) for k, v in released.items()}
    assert len(renamed) == len(released) and ours == renamed  # one to one, same shapes
    assert all(to_reference_key(rename_reference_key(k)) == k for k in released)  # and back


# ---------------------------------------------------------------------------------- timm integration
def test_create_model_with_timm_kwargs() -> None:
    model = timm.create_model("sgformer_tiny", num_classes=4, drop_path_rate=0.1)
    assert isinstance(model, SGFormer)
    assert model.get_classifier().out_features == 4
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert not cfg.get("url") and not cfg.get("hf_hub_id")
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and data_cfg["input_size"] == (3, 224, 224)
    drop_paths = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert drop_paths and math.isclose(max(drop_paths), 0.1, rel_tol=1e-6)


def test_pretrained_file_swaps_head_and_uses_ema(tmp_path: Path) -> None:
    path = tmp_path / "ref.pth"
    saved = _reference_format_checkpoint(path)
    model = timm.create_model(
        "sgformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=3
    )
    state = model.state_dict()
    assert model.get_classifier().out_features == 3
    assert torch.equal(
        state["stages.1.blocks.1.attn.groupers.0.weight"], saved["state_dict_ema"]["block2.1.attn.f1.weight"]
    )
    assert torch.equal(state["pos_embed"], saved["state_dict_ema"]["pos_embed"])

    full = timm.create_model("sgformer_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(full.state_dict()["head.weight"], saved["state_dict_ema"]["head.weight"])


def test_checkpoint_path_argument_loads_reference_format(tmp_path: Path) -> None:
    path = tmp_path / "ref.pth"
    saved = _reference_format_checkpoint(path)
    model = timm.create_model("sgformer_tiny", checkpoint_path=str(path))
    assert torch.equal(model.state_dict()["head.bias"], saved["state_dict_ema"]["head.bias"])


def test_pretrained_without_a_file_is_refused() -> None:
    with pytest.raises(CheckpointError, match="pretrained_cfg_overlay"):
        timm.create_model("sgformer_tiny", pretrained=True)


def test_classifier_api_and_no_weight_decay() -> None:
    model = timm.create_model("sgformer_tiny", num_classes=1000).eval()
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (1, 128, 7, 7)  # NCHW, pool_size (7, 7), as timm's hierarchical models
        assert model.forward_head(tokens, pre_logits=True).shape == (1, 128)
        assert model(x).shape == (1, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (1, 128)
    names = model.no_weight_decay()
    assert names == {"pos_embed"} and isinstance(model.pos_embed, torch.nn.Parameter)


def test_tiny_parameter_count_matches_the_docs() -> None:
    """The sgformer_tiny docstring (and README) say 0.50 M with a few-class head, +0.13 M for ImageNet's."""
    count = {
        n: sum(p.numel() for p in timm.create_model("sgformer_tiny", num_classes=n).parameters())
        for n in (3, 1000)
    }
    assert f"{count[3] / 1e6:.2f}" == "0.50"
    assert f"{(count[1000] - count[3]) / 1e6:.2f}" == "0.13"
    assert "0.50 M" in (sgformer_tiny.__doc__ or "")


def test_xs_is_tiny_at_twice_the_width_with_the_documented_size() -> None:
    """sgformer_xs keeps tiny's depths and ratios, doubles every width, and has the size its docstring states."""
    tiny, xs = (
        timm.create_model("sgformer_tiny", num_classes=3),
        timm.create_model("sgformer_xs", num_classes=3),
    )
    assert xs.embed_dims == [2 * d for d in tiny.embed_dims] == [32, 64, 128, 256]
    assert [len(s.blocks) for s in xs.stages] == [len(s.blocks) for s in tiny.stages]
    count = sum(p.numel() for p in xs.parameters())
    assert f"{count / 1e6:.2f} M" in (sgformer_xs.__doc__ or "")
    assert xs(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_layer_decay_gives_distinct_lr_scales() -> None:
    model = timm.create_model("sgformer_tiny", num_classes=3)
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.75)
    scales = {g["lr_scale"] for g in opt.param_groups}
    assert len(scales) >= sum(model.depths) + 1
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    stem, head = by_param[id(model.pos_embed)], by_param[id(model.head.weight)]
    assert stem["lr_scale"] == min(scales) and stem["weight_decay"] == 0.0
    assert head["lr_scale"] == max(scales) == 1.0
    early = by_param[id(model.stages[0].blocks[0].attn.q1.weight)]["lr_scale"]
    late = by_param[id(model.stages[2].blocks[3].attn.q.weight)]["lr_scale"]
    assert stem["lr_scale"] < early < late < 1.0
    assert len(model.group_matcher(coarse=True)) == 2


def test_forward_intermediates_and_features_only() -> None:
    model = timm.create_model("sgformer_tiny").eval()
    x = torch.randn(2, 3, 224, 224)
    shapes = [(2, 16, 56, 56), (2, 32, 28, 28), (2, 64, 14, 14), (2, 128, 7, 7)]
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(m.shape) for m in maps] == shapes
        last, picked = model.forward_intermediates(x, indices=[1, 3])
        assert last.shape == (2, 128, 7, 7) and [tuple(m.shape) for m in picked] == [shapes[1], shapes[3]]
        assert torch.equal(picked[1], model.forward_features(x))
        feats = timm.create_model("sgformer_tiny", features_only=True, out_indices=(1, 2))
        assert [tuple(f.shape) for f in feats(x)] == shapes[1:3]
    assert feats.feature_info.channels() == [32, 64]


def test_training_step_runs_with_drop_path() -> None:
    model = timm.create_model("sgformer_tiny", num_classes=2, drop_path_rate=0.2, drop_rate=0.1).train()
    loss = model(torch.randn(2, 3, 224, 224)).logsumexp(-1).mean()
    loss.backward()
    assert all(
        p.requires_grad for p in model.parameters()
    )  # pos_embed included: it is trained, like the rest
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# ------------------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize("size", [0, 256, 300, 112, (224, 230)])
def test_invalid_build_size_is_refused(size) -> None:
    with pytest.raises(InputSizeError, match="multiple of 224"):
        SGFormer(img_size=size, embed_dims=(16, 32, 64, 128), depths=(2, 2, 2, 1))


def test_invalid_size_via_timm_is_refused() -> None:
    with pytest.raises(InputSizeError, match="224"):
        timm.create_model("sgformer_tiny", img_size=256)


def test_forward_with_wrong_size_names_valid_sizes() -> None:
    model = timm.create_model("sgformer_tiny").eval()
    with torch.no_grad(), pytest.raises(InputSizeError, match="multiple of 224"):
        model(torch.randn(1, 3, 256, 256))
    with torch.no_grad(), pytest.raises(InputSizeError, match=r"img_size=\(448, 448\)"):
        model(torch.randn(1, 3, 448, 448))
    with torch.no_grad(), pytest.raises(InputSizeError, match="expects"):
        model(torch.randn(1, 1, 224, 224))
    assert valid_img_sizes(3) == [224, 448, 672]


def test_448_loads_224_checkpoint_with_interpolated_pos_embed(
    expected: dict, official: Path, tmp_path: Path
) -> None:
    model = SGFormer(**dict(expected["config"], img_size=448)).eval()
    report = load_checkpoint(model, official)
    assert report["resized"] == ["pos_embed"] and model.pos_embed.shape == (1, 112 * 112, 16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 448, 448))
        maps = model.forward_intermediates(torch.randn(1, 3, 448, 448), intermediates_only=True)
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    assert maps[-1].shape == (1, 128, 14, 14)
    via_timm = timm.create_model(
        "sgformer_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(official)),
        num_classes=3,
        img_size=448,
    )
    assert via_timm.pretrained_cfg["input_size"] == (3, 448, 448)
    assert torch.equal(via_timm.pos_embed, model.pos_embed)


def test_non_square_multiples_of_224_work() -> None:
    model = SGFormer(
        img_size=(224, 448), embed_dims=(16, 32, 64, 128), num_heads=(2, 2, 4, 4), depths=(2, 2, 2, 1)
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 448)).shape == (1, 1000)


# ----------------------------------------------------------------------------------- config & init
def test_sincos_pos_embed_formula() -> None:
    emb = sincos_pos_embed_2d(16, (3, 5))
    assert emb.dtype == torch.float64 and emb.shape == (15, 16)
    row, col = 2, 4
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    want = torch.cat(
        [torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)]
    )
    assert torch.allclose(emb[row * 5 + col], want, atol=0, rtol=1e-12)
    model = SGFormer(embed_dims=(16, 32, 64, 128), depths=(2, 2, 2, 1))
    assert torch.allclose(model.pos_embed[0].double(), sincos_pos_embed_2d(16, (56, 56)), atol=1e-6)


@pytest.mark.parametrize(
    "bad", [dict(sr_ratios=(8, 4, 2, 2)), dict(depths=(2, 3, 2, 1)), dict(num_heads=(1, 2, 4, 8))]
)
def test_invalid_configs_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        SGFormer(**dict(dict(embed_dims=(16, 32, 64, 128), depths=(2, 2, 2, 1)), **bad))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = timm.create_model("sgformer_tiny", num_classes=2).train()
    x = torch.randn(1, 3, 224, 224)
    grads = []
    for enable in (True, False):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.stages[0].blocks[1].attn.groupers[0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ the MLP's recomputing backward
def _mlp_and_input(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, torch.Tensor]:
    from medsg.models.sgformer import Mlp

    torch.manual_seed(0)
    mlp = Mlp(16, 64, (14, 14)).to(dtype)
    with torch.no_grad():
        mlp.dwconv.weight.normal_()  # a non-trivial kernel and biases, so a wrong gradient shows
        mlp.dwconv.bias.normal_()
    return mlp, torch.randn(2, 196, 16, dtype=dtype, requires_grad=True)


def _plain_mlp(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same MLP in plain autograd ops (what ``conv_gelu_linear`` replaces)."""
    from medsg.models.sgformer import _conv_tokens, _tokens_to_map

    hidden = _tokens_to_map(mlp.fc1(x), mlp.grid)
    tokens = _conv_tokens(hidden, mlp.dwconv.weight + mlp.identity, mlp.dwconv.bias, mlp.dwconv.groups)
    return mlp.fc2(torch.nn.functional.gelu(tokens))


def _output_and_grads(mlp, x, forward) -> list[torch.Tensor]:
    mlp.zero_grad()
    x.grad = None
    out = forward(mlp, x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in mlp.parameters())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_recomputing_backward_is_bit_identical_to_autograd(dtype) -> None:
    mlp, x = _mlp_and_input(dtype)
    mlp.train()
    fused = _output_and_grads(mlp, x, lambda m, t: m(t))
    plain = _output_and_grads(mlp, x, _plain_mlp)
    assert len(fused) == 2 + len(list(mlp.parameters()))
    for a, b in zip(fused, plain, strict=True):
        assert a is not None and torch.equal(a, b)


def test_mlp_recomputing_backward_under_bf16_autocast() -> None:
    mlp, x = _mlp_and_input()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _output_and_grads(mlp, x, lambda m, t: m(t))
        plain = _output_and_grads(mlp, x, _plain_mlp)
    assert fused[0].dtype == torch.bfloat16
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_mlp_keeps_only_the_fc1_map_of_its_hidden_tensors_for_backward() -> None:
    """The point of the recompute: of the hidden-sized (B, N, 64) tensors, autograd keeps three (fc1 output, conv
    output, GELU output); the MLP keeps one."""
    mlp, x = _mlp_and_input()
    hidden_numel = 2 * 196 * 64

    def hidden_tensors_saved(forward) -> int:
        saved = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() == hidden_numel:
                saved.add(t.untyped_storage().data_ptr())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward(mlp, x)
        return len(saved)

    assert hidden_tensors_saved(_plain_mlp) == 3
    assert hidden_tensors_saved(lambda m, t: m(t)) == 1
