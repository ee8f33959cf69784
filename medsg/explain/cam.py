"""Grad-CAM family maps (pytorch-grad-cam) for SG-Former and other timm classifiers.

Why this module exists: SG-Former's blocks return ``(tokens, significance)`` tuples. pytorch-grad-cam hooks
a target layer's *output*; for a tuple it registers no gradient hook (silently) and its activation hook fails
with an unhelpful ``AttributeError``. The stage LayerNorms return plain tokens (B, N, C), so they are the
targets here, reshaped to (B, C, h, w) by :func:`token_reshape`. :func:`cam_target_layers` is the only place
that knows their names; :func:`compute_cams` checks every target layer with a cheap probe forward before any
pytorch-grad-cam hook exists, and checks afterwards that a gradient was really recorded for each layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, overload

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medsg.explain.significance import find_sgformer

__all__ = ["CAM_METHODS", "cam_target_layers", "compute_cams", "token_reshape"]

# ScoreCAM is the gradient-free one: it scores each channel by re-running the model on the input masked with
# that (upsampled) channel, i.e. one forward per channel per target layer and image.
CAM_METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}

_LAYER_HINT = (
    "pass layers=[module, ...] to compute_cams: modules that run once per forward and return one tensor, "
    "(B, C, H, W) maps or (B, N, C) tokens on an h x w grid with the input's aspect ratio"
)


# ------------------------------------------------------------------------------------------ target layers
def _sgformer_stage_norm(backbone: nn.Module, i: int) -> nn.Module | None:
    """Stage ``i``'s output LayerNorm, ``stages[i].norm``, or None past the last stage."""
    stages = getattr(backbone, "stages", None)
    if stages is None or i >= len(stages):
        return None
    norm = getattr(stages[i], "norm", None)
    return norm if isinstance(norm, nn.Module) else None


def _feature_info_owner(model: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]] | None:
    """The first module carrying a timm ``feature_info`` (a list of dicts or a FeatureInfo) and its dicts."""
    for module in model.modules():
        info = getattr(module, "feature_info", None)
        info = getattr(info, "info", info)  # timm FeatureInfo keeps the dicts in .info
        if isinstance(info, (list, tuple)) and info and all(isinstance(d, dict) for d in info):
            return module, list(info)
    return None


def _resolve_stages(stages: Sequence[int] | None, n: int, what: str) -> list[int]:
    if stages is None:
        return [n - 1]
    picked = [int(s) for s in stages]
    if not picked:
        raise ValueError(f"stages is empty; give at least one of 0..{n - 1} (or None for the last stage).")
    bad = [s for s in picked if not -n <= s < n]
    if bad:
        raise ValueError(f"stages {bad} out of range: {what} has {n} stages (0..{n - 1}).")
    return [s % n for s in picked]


def cam_target_layers(model: nn.Module, stages: Sequence[int] | None = None) -> list[nn.Module]:
    """Grad-CAM target layers of ``model``: by default the last stage only (the classic Grad-CAM choice,
    the last feature layer before pooling, coarse but closest to the decision).

    SG-Former (also inside wrappers): the output LayerNorm of each stage in ``stages`` (0-based), which
    returns plain tokens (B, N, C); never a block, whose output is a tuple pytorch-grad-cam cannot hook.
    Other timm models: the modules named by ``feature_info[i]["module"]`` (default: the last entry).
    Anything else: ValueError saying how to pass target layers yourself.
    """
    backbone = find_sgformer(model)
    if backbone is not None:
        norms: list[nn.Module] = []
        while (norm := _sgformer_stage_norm(backbone, len(norms))) is not None:
            norms.append(norm)
        if not norms:
            raise ValueError(
                f"found the SG-Former backbone {type(backbone).__name__} but no stage norm "
                f"(looked for stages[i].norm); {_LAYER_HINT}."
            )
        return [norms[i] for i in _resolve_stages(stages, len(norms), "this SG-Former")]

    found = _feature_info_owner(model)
    if found is None:
        raise ValueError(
            f"cannot choose Grad-CAM target layers for {type(model).__name__}: it is neither an SG-Former nor a "
            f"timm model with feature_info; {_LAYER_HINT}."
        )
    owner, infos = found
    layers = []
    for i in _resolve_stages(stages, len(infos), f"{type(owner).__name__}.feature_info"):
        name = infos[i].get("module")
        try:
            layers.append(owner.get_submodule(name))
        except (AttributeError, TypeError) as err:
            raise ValueError(
                f"{type(owner).__name__}.feature_info[{i}] names module {name!r}, which does not exist; "
                f"{_LAYER_HINT}."
            ) from err
    return layers


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's feature maps are (B, H, W, C): timm's ``output_fmt`` NHWC (Swin and kin)."""
    found = _feature_info_owner(model)
    owner = found[0] if found is not None else model
    return str(getattr(owner, "output_fmt", "NCHW")) == "NHWC"


# ------------------------------------------------------------------------------------------ reshape
def _token_grid(n: int, input_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) with h * w == n whose aspect ratio is closest to the input's, within one token per side
    (strided convs floor or ceil, so h = H/s +- 1); None if no factorisation is that close."""
    H, W = input_hw
    best: tuple[int, int] | None = None
    best_err = H + W  # |h*W - w*H| <= |dh|*W + |dw|*H <= W + H for |dh|, |dw| <= 1
    for a in range(1, math.isqrt(n) + 1):
        if n % a:
            continue
        for h, w in ((a, n // a), (n // a, a)):
            err = abs(h * W - w * H)
            if err < best_err or (err == best_err and best is None):
                best, best_err = (h, w), err
    return best


def token_reshape(
    input_hw: tuple[int, int], channels_last: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pytorch-grad-cam ``reshape_transform``: (B, N, C) tokens -> (B, C, h, w) maps.

    The grid is inferred per tensor from N and the input aspect ratio (h * w == N, h / w ~ H / W), so one
    transform serves target layers of different strides and non-square inputs; nothing is hard-coded to
    7 x 7. 4-D (B, C, H, W) tensors (CNN layers) pass through unchanged, and 4-D (B, H, W, C) ones of a
    ``channels_last`` model (timm's ``output_fmt`` NHWC: Swin) are permuted to it. Tokens that fit no grid
    (e.g. a ViT's class token) raise ValueError.
    """
    H, W = int(input_hw[0]), int(input_hw[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"input_hw must be two positive sizes, got {input_hw!r}.")

    def reshape(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2) if channels_last else x
        if x.ndim != 3:
            raise ValueError(
                f"expected (B, N, C) tokens or (B, C, H, W) maps from a Grad-CAM target layer, got shape "
                f"{tuple(x.shape)}; {_LAYER_HINT}."
            )
        b, n, c = x.shape
        grid = _token_grid(n, (H, W))
        if grid is None:
            raise ValueError(
                f"{n} tokens fit no h x w grid with the aspect ratio of the {H}x{W} input (shape "
                f"{tuple(x.shape)}); class or register tokens are not supported; {_LAYER_HINT}."
            )
        return x.reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)

    return reshape


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def _eval_and_restore(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call; afterwards every module's own mode and every parameter's ``.grad`` are put
    back (pytorch-grad-cam calls ``model.zero_grad()`` and backpropagates into the parameters)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        model.train(modes[0][1])
        for m, mode in modes:  # a mixed-mode model (e.g. frozen BatchNorm in a training model) stays mixed
            m.training = mode
        for p, grad in grads:
            p.grad = grad


def _layer_names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {id(m): n or "<model>" for n, m in model.named_modules()}
    return [names.get(id(layer), f"<{type(layer).__name__} outside the model>") for layer in layers]


def _probe(
    model: nn.Module,
    layers: Sequence[nn.Module],
    names: Sequence[str],
    x: torch.Tensor,
    reshape: Callable[[torch.Tensor], torch.Tensor],
) -> int:
    """One forward of ``x`` (one image) with temporary hooks: each target layer must run once and return a
    tensor that the reshape accepts and that depends on the input through autograd, and the model must return
    (B, num_classes) logits. Returns num_classes.

    Done before any pytorch-grad-cam hook exists, so a bad layer fails with a clear message instead of the
    library's ``'tuple' object has no attribute 'cpu'`` or a blank map.
    """
    calls = [0] * len(layers)

    def make_hook(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[i] += 1
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"target layer {names[i]} ({type(module).__name__}) returns {type(output).__name__}, not a "
                    "tensor; pytorch-grad-cam records no gradient for such an output (an SG-Former block "
                    "returns (tokens, significance)). Use cam_target_layers(model) (the stage norms) or "
                    f"{_LAYER_HINT}."
                )
            reshape(output)  # ValueError now if the layer's tokens fit no grid
            if not output.requires_grad:
                raise ValueError(
                    f"target layer {names[i]} ({type(module).__name__}) returns a tensor without autograd "
                    f"history (detached, or computed under no_grad), so no gradient can be recorded; {_LAYER_HINT}."
                )

        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    try:
        out = model(x.detach().requires_grad_(True))  # grad-enabled: requires_grad above must be meaningful
    finally:
        for handle in handles:
            handle.remove()
    for name, count in zip(names, calls, strict=True):
        if count != 1:
            why = "did not run in the model's forward" if count == 0 else f"ran {count} times in one forward"
            raise ValueError(f"target layer {name} {why}; {_LAYER_HINT}.")
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TypeError(f"compute_cams needs a classifier returning (B, num_classes) logits, got {got}.")
    return int(out.shape[1])


class _Reraise(Exception):
    """Carries an IndexError past pytorch-grad-cam's ``__exit__``, which prints and swallows IndexErrors."""


# ------------------------------------------------------------------------------------------ compute_cams
@overload
def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    methods: Sequence[str] = ...,
    layers: Sequence[nn.Module] | None = ...,
    batch_size: int = ...,
    *,
    return_stats: Literal[False] = ...,
) -> dict[str, np.ndarray]: ...


@overload
def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    methods: Sequence[str] = ...,
    layers: Sequence[nn.Module] | None = ...,
    batch_size: int = ...,
    *,
    return_stats: Literal[True],
) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]: ...


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    methods: Sequence[str] = ("gradcam", "gradcam++"),
    layers: Sequence[nn.Module] | None = None,
    batch_size: int = 16,
    *,
    return_stats: bool = False,
) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Class activation maps {method: (N, H, W) float32 in [0, 1]} at the input resolution.

    ``images`` is the normalised model input (N, 3, H, W); ``targets[i]`` the class to explain for image i;
    ``layers`` defaults to :func:`cam_target_layers` (the last stage). With several layers the per-layer maps
    are averaged; every map is min-max scaled per image (pytorch-grad-cam), so values compare within a map,
    not across images. ``batch_size`` bounds the images per forward (and ScoreCAM's masked inputs per
    forward).

    Side-effect free for the caller: eval mode for the call, then each module's mode is restored; every
    CAM object is a context manager, so no hook outlives the call, even on error; parameters' ``.grad`` are
    put back and ``requires_grad`` is never touched (the input is made to require grad instead, so frozen
    backbones still get gradients). Works under ``torch.no_grad()`` and ``torch.inference_mode()``.

    ``return_stats=True`` also returns {method: [max |gradient| recorded at each target layer]} for the
    gradient methods: a zero there means a blank map (it also warns), a missing gradient raises.
    """
    names_in = [str(m).lower() for m in ((methods,) if isinstance(methods, str) else methods)]
    unknown = [m for m in names_in if m not in CAM_METHODS]
    if unknown or not names_in:
        raise ValueError(
            f"unknown CAM method(s) {unknown or list(methods)}; choose from {sorted(CAM_METHODS)}."
        )
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {got}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    target_list = [int(t) for t in targets]
    if len(target_list) != images.shape[0]:
        raise ValueError(
            f"{len(target_list)} targets for {images.shape[0]} images; give one class per image."
        )
    layers = cam_target_layers(model) if layers is None else list(layers)
    if not layers or not all(isinstance(layer, nn.Module) for layer in layers):
        raise ValueError(f"layers must be a non-empty list of nn.Module; {_LAYER_HINT}.")
    layer_names = _layer_names(model, layers)
    hw = (int(images.shape[2]), int(images.shape[3]))
    reshape = token_reshape(hw, channels_last=_channels_last(model))
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device

    maps: dict[str, np.ndarray] = {}
    stats: dict[str, list[float]] = {}
    # pytorch-grad-cam needs autograd: undo a caller's no_grad / inference_mode for this call only
    with torch.inference_mode(False), torch.enable_grad(), _eval_and_restore(model):
        # clone: an inference-mode tensor cannot be saved for backward; the clone can
        images = images.detach().to(device).clone()
        num_classes = _probe(model, layers, layer_names, images[:1], reshape)
        bad = [t for t in target_list if not 0 <= t < num_classes]
        if bad:
            raise ValueError(f"targets {bad} out of range for a model with {num_classes} classes.")
        for name in dict.fromkeys(names_in):
            try:
                maps[name], grad_max = _run_method(
                    CAM_METHODS[name], model, images, target_list, layers, reshape, batch_size
                )
            except _Reraise as wrapped:
                raise wrapped.args[0] from None
            if grad_max is not None:
                stats[name] = grad_max
                blank = [n for n, g in zip(layer_names, grad_max, strict=True) if g == 0.0]
                if blank:
                    warnings.warn(
                        f"{name}: all recorded gradients are zero at {blank}; those layers give blank maps "
                        "(the target logit does not depend on their output, e.g. a ViT's patch tokens after the "
                        "last block).",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return (maps, stats) if return_stats else maps


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence the per-image tqdm bar that ScoreCAM prints (hundreds of lines over a test fold)."""
    import types

    from pytorch_grad_cam import score_cam

    original = score_cam.tqdm
    score_cam.tqdm = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    try:
        yield
    finally:
        score_cam.tqdm = original


def _run_method(
    cls: type,
    model: nn.Module,
    images: torch.Tensor,
    targets: list[int],
    layers: list[nn.Module],
    reshape: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> tuple[np.ndarray, list[float] | None]:
    """One CAM method over all images in chunks; (maps, per-layer max |grad|, None if gradient-free)."""
    out: list[np.ndarray] = []
    grad_max: list[float] | None = None
    with _no_progress_bars(), cls(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        try:
            cam.batch_size = batch_size  # read by ScoreCAM for its masked forwards
            for start in range(0, images.shape[0], batch_size):
                chunk = images[start : start + batch_size].detach().requires_grad_(True)
                chunk_targets = [ClassifierOutputTarget(t) for t in targets[start : start + batch_size]]
                out.append(np.asarray(cam(input_tensor=chunk, targets=chunk_targets), dtype=np.float32))
                cam.outputs = None  # drop the retained graph before the next chunk
                if cam.uses_gradients:
                    grads = cam.activations_and_grads.gradients
                    if len(grads) != len(layers):
                        raise RuntimeError(
                            f"{cls.__name__} recorded gradients for {len(grads)} of {len(layers)} target "
                            f"layers; the maps would be wrong or blank. {_LAYER_HINT}."
                        )
                    chunk_max = [float(g.abs().max()) for g in grads]
                    grad_max = chunk_max if grad_max is None else list(map(max, grad_max, chunk_max))
        except IndexError as err:
            raise _Reraise(err) from err
    return np.concatenate(out, axis=0), grad_max
