"""Grad-CAM through pytorch-grad-cam (medsg.explain.cam): real maps from sgformer_tiny and a timm resnet18."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from torch.nn.modules import module as torch_module

import medsg  # noqa: F401  (registers the sgformer_* models with timm)
from medsg.explain.cam import CAM_METHODS, cam_target_layers, compute_cams, token_reshape

HW = (224, 224)


def _sgformer(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("sgformer_tiny", num_classes=3, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these small models gain little from two, and the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _sgformer()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, *HW, generator=torch.Generator().manual_seed(1))


def _spy(base: type, seen: list) -> type:
    """A CAM class that records, after each call, the gradients its ActivationsAndGradients holds."""

    class Spy(base):
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            seen.append(
                {
                    "grads": [g.clone() for g in self.activations_and_grads.gradients],
                    "batch_size": getattr(self, "batch_size", None),
                }
            )
            return out

    return Spy


def _hooks(model: nn.Module) -> dict[tuple[str, str], int]:
    """Every hook registry we can see: per-module, per-parameter tensor hooks, and the global module hooks."""
    counts: dict[tuple[str, str], int] = {}
    attrs = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_full_backward_hooks",  # absent in torch 2.x (full hooks live in _backward_hooks); kept for older ones
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
    )
    for name, m in model.named_modules():
        for attr in attrs:
            counts[(name, attr)] = len(getattr(m, attr, None) or {})
    for name, p in model.named_parameters():
        counts[(name, "tensor _backward_hooks")] = len(p._backward_hooks or {})
        counts[(name, "tensor _post_accumulate_grad_hooks")] = len(p._post_accumulate_grad_hooks or {})
    for attr in dir(torch_module):
        if attr.startswith("_global_") and attr.endswith("hooks"):
            counts[("<global>", attr)] = len(getattr(torch_module, attr))
    return counts


def _check_maps(maps: dict[str, np.ndarray], methods, shape) -> None:
    assert set(maps) == set(methods)
    for name, m in maps.items():
        assert m.shape == shape, name
        assert m.dtype == np.float32, name
        assert np.isfinite(m).all(), name
        assert m.min() >= 0.0 and m.max() <= 1.0, name
        # one image may legitimately be blank (no positive evidence for its class), not all of them
        assert m.max() > 0.5, f"{name}: only blank maps"


# --------------------------------------------------------------------------------------- maps
@pytest.fixture(scope="module")
def default_run(model, images):
    """One image twice, explained for classes 0 and 1, with spies on the recorded gradients (shared by tests)."""
    seen: dict[str, list] = {"gradcam": [], "gradcam++": []}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(CAM_METHODS, "gradcam", _spy(GradCAM, seen["gradcam"]))
        mp.setitem(CAM_METHODS, "gradcam++", _spy(GradCAMPlusPlus, seen["gradcam++"]))
        x = images[:1].expand(2, -1, -1, -1)
        maps, stats = compute_cams(model, x, [0, 1], methods=("gradcam", "gradcam++"), return_stats=True)
    return maps, stats, seen


def test_gradient_methods_give_input_sized_maps_in_unit_range(default_run):
    maps, _, _ = default_run
    _check_maps(maps, ("gradcam", "gradcam++"), (2, *HW))


def test_recorded_gradients_are_nonzero_for_the_stage_norms(default_run):
    _, stats, seen = default_run
    for method in ("gradcam", "gradcam++"):
        (grads,) = seen[method][0][
            "grads"
        ]  # one target layer, stages[3].norm: tokens reshaped to (B, C, 7, 7)
        assert grads.shape == (2, 128, 7, 7)
        assert grads.abs().amax(dim=(1, 2, 3)).gt(0).all(), f"{method}: an image got no gradient"
        assert stats[method] == pytest.approx([float(grads.abs().max())])
        assert stats[method][0] > 0


def test_a_different_target_class_changes_the_map(default_run):
    maps, _, _ = default_run
    for method in ("gradcam", "gradcam++"):
        assert np.abs(maps[method][0] - maps[method][1]).max() > 0.05, method


def test_scorecam_is_gradient_free_and_uses_batch_size(model, images, monkeypatch):
    seen: list = []
    monkeypatch.setitem(CAM_METHODS, "scorecam", _spy(ScoreCAM, seen))
    # stage 0 has 16 channels: 16 masked forwards instead of the last stage's 128
    maps, stats = compute_cams(
        model,
        images[1:],
        [2],
        methods=["scorecam"],
        layers=cam_target_layers(model, [0]),
        batch_size=16,
        return_stats=True,
    )
    _check_maps(maps, ("scorecam",), (1, *HW))
    assert seen[0]["batch_size"] == 16
    assert seen[0]["grads"] == [] and "scorecam" not in stats  # no backward at all


@pytest.mark.parametrize("stages", [(1, 2, 3), (0, 1, 2, 3)])
def test_several_target_layers_with_different_token_grids(model, images, monkeypatch, stages):
    seen: list = []
    monkeypatch.setitem(CAM_METHODS, "gradcam", _spy(GradCAM, seen))
    layers = cam_target_layers(model, stages)
    assert layers == [model.stages[i].norm for i in stages]
    maps, stats = compute_cams(model, images[:1], [1], methods=["gradcam"], layers=layers, return_stats=True)
    _check_maps(maps, ("gradcam",), (1, *HW))
    grids = [tuple(g.shape[-2:]) for g in seen[0]["grads"]]
    assert grids == [(56 // 2**i, 56 // 2**i) for i in stages]
    assert len(stats["gradcam"]) == len(stages) and all(g > 0 for g in stats["gradcam"])


def test_non_square_input_reshapes_to_a_non_square_grid(monkeypatch):
    wide = _sgformer(img_size=(224, 448))
    seen: list = []
    monkeypatch.setitem(CAM_METHODS, "gradcam", _spy(GradCAM, seen))
    x = torch.randn(1, 3, 224, 448)
    maps = compute_cams(wide, x, [0], methods=["gradcam"], layers=cam_target_layers(wide, [1, 3]))
    _check_maps(maps, ("gradcam",), (1, 224, 448))
    assert [tuple(g.shape[-2:]) for g in seen[0]["grads"]] == [(28, 56), (7, 14)]


def test_token_reshape_infers_the_grid_from_count_and_aspect_ratio():
    b, h, w, c = 2, 28, 56, 5
    tokens = torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h * w, c)
    out = token_reshape((224, 448))(tokens)
    assert out.shape == (b, c, h, w)
    # token k sits at row k // w, column k % w (row-major, like the model's flatten(2))
    assert torch.equal(out[1, 3, 2, 5], tokens[1, 2 * w + 5, 3])
    assert token_reshape((448, 224))(torch.zeros(1, h * w, c)).shape == (1, c, w, h)
    assert token_reshape(HW)(torch.zeros(1, 49, 8)).shape == (1, 8, 7, 7)
    assert token_reshape((230, 230))(torch.zeros(1, 64, 8)).shape == (1, 8, 8, 8)  # ceil-mode stride 32
    fmap = torch.zeros(1, 8, 3, 4)
    assert token_reshape(HW)(fmap) is fmap  # CNN maps pass through
    with pytest.raises(ValueError, match="fit no h x w grid"):
        token_reshape(HW)(torch.zeros(1, 50, 8))  # 49 patches + a class token
    with pytest.raises(ValueError, match=r"\(B, N, C\) tokens or \(B, C, H, W\)"):
        token_reshape(HW)(torch.zeros(1, 8))


# --------------------------------------------------------------------------------------- target layers
def test_target_layers_are_tensor_outputs_never_tuple_blocks(model, images):
    layers = cam_target_layers(model, range(4))
    assert cam_target_layers(model) == [model.stages[3].norm]
    assert cam_target_layers(model, [-1]) == [model.stages[3].norm]
    outputs: list = []
    handles = [layer.register_forward_hook(lambda m, a, o: outputs.append(o)) for layer in layers]
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    assert [type(o) for o in outputs] == [torch.Tensor] * 4
    assert [o.shape[1] for o in outputs] == [56 * 56, 28 * 28, 14 * 14, 7 * 7]
    wrapped = nn.Sequential(model)  # found inside wrappers too
    assert cam_target_layers(wrapped, [0]) == [model.stages[0].norm]
    with pytest.raises(ValueError, match="out of range"):
        cam_target_layers(model, [4])


def test_stage_norm_lookup_prefers_stages_i_norm():
    class Stage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)

    class Refactored(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.significance_recorder = None  # what find_sgformer looks for
            self.stages = nn.ModuleList([Stage(), Stage(), Stage()])

    m = Refactored()
    assert cam_target_layers(m) == [m.stages[2].norm]
    assert cam_target_layers(nn.Sequential(m), [0, 2]) == [m.stages[0].norm, m.stages[2].norm]


def test_a_tuple_output_layer_is_refused_clearly(model, images):
    before = _hooks(model)
    with pytest.raises(TypeError, match=r"returns tuple.*stage norms"):
        compute_cams(model, images[:1], [0], layers=[model.stages[3].blocks[0]])
    assert _hooks(model) == before


def test_other_models_need_explicit_layers():
    with pytest.raises(ValueError, match=r"pass layers=\["):
        cam_target_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)))


def test_timm_cnn_through_feature_info():
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=3, pretrained=False)
    assert cam_target_layers(net) == [net.layer4]
    # feature_info indexes timm's feature list, which for resnet starts with the stem (act1, stride 2)
    assert cam_target_layers(net, [3, 4]) == [net.layer3, net.layer4]
    x = torch.randn(2, 3, 96, 96)
    maps, stats = compute_cams(net, x, [0, 2], layers=cam_target_layers(net, [3, 4]), return_stats=True)
    _check_maps(maps, ("gradcam", "gradcam++"), (2, 96, 96))
    assert all(g > 0 for g in stats["gradcam"])


# --------------------------------------------------------------------------------------- side effects
def test_mode_params_grads_and_requires_grad_are_left_as_they_were(images):
    m = _sgformer()
    m.train()
    m.stages[1].norm.eval()  # a mixed-mode model stays mixed
    m.stages[0].blocks.requires_grad_(False)
    preset = torch.full_like(m.head.weight, 7.0)
    m.head.weight.grad = preset
    state = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: s.training for n, s in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}

    with torch.no_grad():  # pytorch-grad-cam needs autograd; compute_cams turns it back on for the call
        maps = compute_cams(m, images[:1], [1], methods=["gradcam"])
    _check_maps(maps, ("gradcam",), (1, *HW))
    assert {n: s.training for n, s in m.named_modules()} == modes
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert m.head.weight.grad is preset and bool((preset == 7.0).all())
    assert all(p.grad is None for n, p in m.named_parameters() if n != "head.weight")


def test_frozen_model_under_inference_mode_still_records_gradients(images):
    m = _sgformer().requires_grad_(False)  # a frozen backbone: the input carries the autograd graph
    with torch.inference_mode():
        x = images[:1].clone()  # an inference tensor, which cannot be saved for backward as it is
        maps, stats = compute_cams(m, x, [1], methods=["gradcam"], return_stats=True)
    _check_maps(maps, ("gradcam",), (1, *HW))
    assert stats["gradcam"][0] > 0
    assert not any(p.requires_grad for p in m.parameters())


class _FailsOnSecondForward(nn.Module):
    """Lets compute_cams' probe forward pass, then raises inside the CAM call (hooks registered by then)."""

    def __init__(self, inner: nn.Module, error: Exception) -> None:
        super().__init__()
        self.inner, self.error, self.calls = inner, error, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        if self.calls >= 2:
            raise self.error
        return out


def test_no_hooks_left_behind_after_success_or_error(model, images):
    before = _hooks(model)
    assert sum(before.values()) == 0  # the counter sees hooks: checked below by registering one
    compute_cams(
        model, images[:1], [0], methods=["gradcam", "gradcam++"], layers=cam_target_layers(model, range(4))
    )
    assert _hooks(model) == before

    for error in (
        RuntimeError("boom"),
        IndexError("boom"),
    ):  # pytorch-grad-cam's __exit__ swallows IndexError
        failing = _FailsOnSecondForward(model, error)
        with pytest.raises(type(error), match="boom"):
            compute_cams(failing, images[:1], [0], methods=["gradcam"])
        assert failing.calls == 2
        assert _hooks(model) == before

    handle = model.stages[3].norm.register_forward_hook(lambda *a: None)
    try:
        assert sum(_hooks(model).values()) == 1
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------- argument errors
def test_bad_arguments_raise_clear_errors(model, images):
    with pytest.raises(ValueError, match=r"unknown CAM method.*gradcam\+\+.*scorecam"):
        compute_cams(model, images, [0, 1], methods=["eigencam"])
    with pytest.raises(ValueError, match="out of range for a model with 3 classes"):
        compute_cams(model, images, [0, 3])
    with pytest.raises(ValueError, match="2 targets for 1 images"):
        compute_cams(model, images[:1], [0, 1])
    with pytest.raises(ValueError, match="did not run"):
        compute_cams(model, images[:1], [0], layers=[nn.LayerNorm(4)])


def test_channels_last_feature_maps_are_permuted_for_grad_cam():
    """Swin's stages output (B, H, W, C): read as (B, C, H, W), Grad-CAM would weigh 7 'channels' of width 768."""
    import timm

    from medsg.explain.cam import _channels_last

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3)
    cnn = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=3)
    assert _channels_last(swin) and not _channels_last(cnn)
    nhwc = torch.arange(2 * 7 * 7 * 16, dtype=torch.float32).reshape(2, 7, 7, 16)
    out = token_reshape((224, 224), channels_last=True)(nhwc)
    assert out.shape == (2, 16, 7, 7) and torch.equal(out[:, 5], nhwc[..., 5])
    assert token_reshape((224, 224))(out) is out  # channels-first maps pass through
