"""SG-Former (Ren et al., ICCV 2023) written for timm: sgformer_s/m/b and a small sgformer_tiny.

An independent implementation of the block design of the public reference (OliverRensu/SG-Former),
state-dict compatible with its released checkpoints, that fixes what breaks there:
``timm.create_model`` works, ``reset_classifier`` works, sizes other than 224 are either served
(multiples of 224 per side) or refused with a clear error, and the sin-cos position embedding is
computed without ``np.float``.

The design in brief. Every stage but the last alternates two kinds of block:

* a *hybrid* block (even index): half of the heads attend globally to a strided summary of the
  tokens (``sr`` conv), the other half attend locally inside 7x7 windows. The mean attention each
  token receives, local plus global, is its *significance map* (B, H, W), handed to the next block;
* a *significance-guided* block (odd index): tokens are sorted by significance and aggregated into
  keys/values, finely for salient tokens and coarsely for the rest (linear layers ``f1/f2/f3`` over
  groups of 196/56/28, 49/14/7 or 2/1 consecutive sorted tokens). Half of the heads see the tokens
  in row-major order, the other half in column-major order.

The last stage uses plain multi-head attention. Every attention adds a locally enhanced positional
encoding (``lepe``: linear + 3x3 depthwise conv).

Valid input sizes: every side a positive multiple of 224. Stage 1 (stride 4) then has sides that
are multiples of 56 = lcm(8, 7) (sr stride 8 and 7x7 windows), stage 2 multiples of 28 = lcm(4, 7)
and stage 3 multiples of 14 = lcm(2, 7); the token-grouping layers then see exactly the group
lengths they were built for. The position embedding fixes the size at build time (``img_size``);
checkpoints for another valid size are resized on load (bicubic on the 2-D grid).
"""

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from medsg.core.errors import CheckpointError, ConfigError, InputSizeError
from medsg.models.checkpoint import adapt_state_dict, load_checkpoint

__all__ = [
    "SGFormer",
    "SGFormerStage",
    "check_img_size",
    "valid_img_sizes",
    "checkpoint_filter_fn",
    "rename_reference_keys",
    "sincos_pos_embed_2d",
]

SIZE_UNIT = 224  # every input side must be a positive multiple of this
WINDOW = 7  # local attention window of the hybrid blocks
SR_RATIOS = (8, 4, 2, 1)  # the token-grouping layers are tied to these strides
# sr ratio -> (group length of f1, f2, f3; None where a layer is absent), as in the released weights
GROUP_LENGTHS = {8: (196, 56, 28), 4: (49, 14, 7), 2: (2, 1, None)}


def valid_img_sizes(max_multiple: int = 4) -> list[int]:
    """Side lengths SG-Former can serve (each side of the input must be one of these multiples)."""
    return [SIZE_UNIT * k for k in range(1, max_multiple + 1)]


def _size_hint() -> str:
    sizes = ", ".join(str(s) for s in valid_img_sizes())
    return f"every side must be a positive multiple of {SIZE_UNIT} ({sizes}, ...)"


def check_img_size(img_size: int | Sequence[int]) -> None:
    """Raise ``InputSizeError`` (naming the valid sizes) for a size SG-Former cannot serve; the config check
    calls this so a wrong ``model.img_size`` fails before any data is read, not at model build."""
    _to_hw(img_size)


def _to_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise ``img_size`` to (H, W) and refuse sizes the architecture cannot serve."""
    hw = (int(img_size), int(img_size)) if isinstance(img_size, (int, np.integer)) else tuple(img_size)
    if len(hw) != 2 or any(int(s) != s or s <= 0 or s % SIZE_UNIT for s in hw):
        raise InputSizeError(
            f"SG-Former cannot be built for img_size={img_size!r}: {_size_hint()}. "
            "Resize or crop your images to such a size."
        )
    return int(hw[0]), int(hw[1])


def sincos_pos_embed_2d(embed_dim: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE convention), computed in float64.

    Returns (H*W, embed_dim), row-major. As in the reference, the first half of the channels encodes
    the column index and the second half the row index.
    """
    if embed_dim % 4:
        raise ConfigError(
            f"embed_dims[0]={embed_dim} must be divisible by 4 for the sin-cos position embedding."
        )
    h, w = grid_hw
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


class ConvNorm(nn.Sequential):
    """Bias-free conv followed by a one-group GroupNorm (the reference's ``Conv2d_BN``)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False)
        )
        self.add_module("bn", nn.GroupNorm(1, out_chs))


class Stem(nn.Module):
    """Three 3x3 convs (stride 2, 1, 2) to stride 4, then LayerNorm over tokens: (B, 3, H, W) -> (B, N, C)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            ConvNorm(in_chans, dim, 3, 2),
            nn.GELU(),
            ConvNorm(dim, dim, 3, 1),
            nn.GELU(),
            ConvNorm(dim, dim, 3, 2),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last convs: oneDNN's NHWC kernels are faster for these few-channel maps (forward and
        # backward), and the (B, C, H, W) -> tokens view below needs no transposing copy
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.flatten(2).transpose(1, 2))


class Downsample(nn.Module):
    """Pointwise -> depthwise stride-2 -> pointwise convs between stages (``PatchMerging``): map -> tokens."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvNorm(dim, out_dim, 1)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, 2, groups=out_dim)
        self.conv3 = ConvNorm(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.conv3(x).flatten(2).transpose(1, 2)


def _tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, N, C) -> map (B, C, H, W) on a known grid (static sizes keep FX tracing and TorchScript)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])


class _ConvGeluLinear(torch.autograd.Function):
    """The MLP after ``fc1``: depthwise 3x3 conv of the (B, C, H, W) map -> GELU -> ``fc2`` on (B, H*W, C) tokens,
    saving only the map for the backward and recomputing the conv and GELU outputs there.

    Autograd would keep the conv output (GELU's input) and the GELU output (``fc2``'s input) beside the map:
    two hidden-sized tensors per block, the largest a block holds (S, batch 8: about 390 MB over its 23
    blocks), bought back with one depthwise conv and one GELU forward per block in the backward. The backward
    makes autograd's own calls (the same kernels, operands and layouts), so values and gradients are
    bit-identical to plain autograd. One dtype throughout: ``conv_gelu_linear`` casts for autocast first.
    Differentiable once (no double backward).
    """

    @staticmethod
    def forward(ctx: Any, x, weight, bias, fc_weight, fc_bias, groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight, bias, fc_weight)
        ctx.groups = groups
        return _conv_gelu_linear_plain(x, weight, bias, fc_weight, fc_bias, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, bias, fc_weight = ctx.saved_tensors
        need_x, need_w, need_b, need_fc_w, need_fc_b = ctx.needs_input_grad[:5]
        pre = _conv_tokens(x, weight, bias, ctx.groups)
        grad = grad.reshape(-1, grad.shape[-1])  # F.linear on (B, N, C) is addmm on the (B*N, C) view
        fc_weight_grad = grad.t().mm(F.gelu(pre).reshape(-1, pre.shape[-1])) if need_fc_w else None
        fc_bias_grad = grad.sum(0) if need_fc_b else None
        grad = torch.ops.aten.gelu_backward(grad.mm(fc_weight).view(pre.shape), pre)
        grad = grad.transpose(1, 2).reshape(x.shape)  # tokens -> map, the view autograd would hand the conv
        one, no_pad = [1, 1], [0, 0]
        conv_grads = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]],
            one,
            one,
            one,
            False,
            no_pad,
            ctx.groups,
            [need_x, need_w, need_b],
        )
        return (*conv_grads, fc_weight_grad, fc_bias_grad, None)


def _conv_tokens(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int
) -> torch.Tensor:
    """Depthwise 3x3 conv of a (B, C, H, W) map, as (B, H*W, C) tokens."""
    return F.conv2d(x, weight, bias, padding=1, groups=groups).flatten(2).transpose(1, 2)


def _conv_gelu_linear_plain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fc_weight: torch.Tensor,
    fc_bias: torch.Tensor | None,
    groups: int,
) -> torch.Tensor:
    """The MLP after ``fc1`` in plain ops: what ``_ConvGeluLinear`` computes, and what its backward mirrors."""
    return F.linear(F.gelu(_conv_tokens(x, weight, bias, groups)), fc_weight, fc_bias)


@register_notrace_function
def conv_gelu_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fc_weight: torch.Tensor,
    fc_bias: torch.Tensor | None,
    groups: int,
) -> torch.Tensor:
    """``F.linear(GELU(conv2d(x, weight, bias, padding=1, groups=groups)) as tokens, fc_weight, fc_bias)``; when
    training, the conv and GELU outputs are recomputed in the backward instead of kept (``_ConvGeluLinear``).
    A leaf for FX; under TorchScript (which cannot run an autograd Function) plain autograd."""
    if torch.jit.is_scripting():
        return _conv_gelu_linear_plain(x, weight, bias, fc_weight, fc_bias, groups)
    else:
        return _conv_gelu_linear_eager(x, weight, bias, fc_weight, fc_bias, groups)


def _conv_gelu_linear_eager(x, weight, bias, fc_weight, fc_bias, groups: int) -> torch.Tensor:
    inputs = (x, weight, bias, fc_weight, fc_bias)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)):
        return _conv_gelu_linear_plain(x, weight, bias, fc_weight, fc_bias, groups)
    device = x.device.type
    if not torch.amp.is_autocast_available(device):  # e.g. the meta device
        return _ConvGeluLinear.apply(*inputs, groups)
    if torch.is_autocast_enabled(device):  # what autocast would give conv and linear, for both passes
        dtype = torch.get_autocast_dtype(device)
        inputs = tuple(None if t is None else t.to(dtype) for t in inputs)
    with torch.autocast(device, enabled=False):
        return _ConvGeluLinear.apply(*inputs, groups)


class Mlp(nn.Module):
    """fc1 -> GELU(x + dwconv(x)) -> fc2, on the stage's fixed token grid.

    ``dwconv`` and ``fc2`` hold the weights (the checkpoints' names) but are not called as modules: the forward
    folds the identity into the depthwise kernel and runs conv, GELU and ``fc2`` as one step that recomputes
    its hidden tensors in the backward (``conv_gelu_linear``), so hooks on ``mlp.dwconv`` or ``mlp.fc2`` never
    fire. With dropout (``drop`` > 0) in training the steps run one by one.
    """

    def __init__(self, dim: int, hidden: int, grid: tuple[int, int], drop: float = 0.0):
        super().__init__()
        self.grid = grid
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        # x + dwconv(x) is one depthwise conv whose centre tap is raised by one: no separate add pass
        identity = torch.zeros(hidden, 1, 3, 3)
        identity[:, :, 1, 1] = 1.0
        self.register_buffer("identity", identity, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens_to_map(self.fc1(x), self.grid)
        kernel = self.dwconv.weight + self.identity
        if self.training and self.drop.p > 0:
            x = F.gelu(_conv_tokens(x, kernel, self.dwconv.bias, self.dwconv.groups))
            return self.drop(self.fc2(self.drop(x)))
        return conv_gelu_linear(
            x, kernel, self.dwconv.bias, self.fc2.weight, self.fc2.bias, self.dwconv.groups
        )


class _AttentionBase(nn.Module):
    """What every attention kind shares: the head split, the locally enhanced positional encoding (``lepe``),
    the output projection; ``split_heads`` (hybrid, guided) checks that the heads halve evenly."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        attn_drop: float,
        proj_drop: float,
        sr_ratio: int = 1,
        split_heads: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        if split_heads and num_heads % 2:
            raise ConfigError(
                f"{type(self).__name__} splits heads in two halves; num_heads={num_heads} is odd."
            )
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid = grid
        self.num_tokens = grid[0] * grid[1]
        self.sr_ratio = sr_ratio
        self.attn_drop_p = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.lepe_linear = nn.Linear(dim, dim)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def lepe(self, x: torch.Tensor) -> torch.Tensor:
        """Locally enhanced positional encoding: linear + 3x3 depthwise conv on the token grid."""
        return self.lepe_conv(_tokens_to_map(self.lepe_linear(x), self.grid)).flatten(2).transpose(1, 2)

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Fused attention; attention dropout only in training, as ``nn.Dropout`` would do."""
        p = self.attn_drop_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)

    def output(self, x: torch.Tensor, lepe: torch.Tensor) -> torch.Tensor:
        """Add the positional encoding, then project and drop out (shared by every attention kind)."""
        return self.proj_drop(self.proj(x + lepe))


class FullAttention(_AttentionBase):
    """Plain multi-head attention (last stage)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ):
        super().__init__(dim, num_heads, grid, attn_drop, proj_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)

    def forward(
        self, x: torch.Tensor, significance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape[0], self.num_tokens, self.dim
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.sdpa(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.output(out, self.lepe(x)), None


class _SplitHeadAttention(_AttentionBase):
    """The hybrid and guided blocks' common init: heads in two halves, tied to the stage's ``sr_ratio``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        sr_ratio: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ):
        super().__init__(dim, num_heads, grid, attn_drop, proj_drop, sr_ratio, split_heads=True)
        self.build(dim, sr_ratio, qkv_bias)  # after the shared layers: the released checkpoints' init order

    def build(self, dim: int, sr_ratio: int, qkv_bias: bool) -> None:
        """The layers of this attention kind."""
        raise NotImplementedError


class HybridAttention(_SplitHeadAttention):
    """Half the heads global (strided keys), half local (7x7 windows); returns the significance map."""

    def build(self, dim: int, sr_ratio: int, qkv_bias: bool) -> None:
        self.window = WINDOW
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.q1 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.q2 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(
        self, x: torch.Tensor, significance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape[0], self.num_tokens, self.dim
        h, w = self.grid
        heads, d, win = self.num_heads // 2, self.head_dim, self.window

        # global half: every token attends to the (H/r x W/r) strided summary
        q1 = self.q1(x).reshape(b, n, heads, d).transpose(1, 2)
        pooled = self.sr(_tokens_to_map(x, self.grid)).flatten(2).transpose(1, 2)
        k1, v1 = (
            self.kv1(self.act(self.norm(pooled))).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        )
        attn1 = ((q1 * self.scale) @ k1.transpose(-2, -1)).softmax(dim=-1)  # scale the small side
        x1 = (self.attn_drop(attn1) @ v1).transpose(1, 2).reshape(b, n, c // 2)

        # local half: attention inside non-overlapping 7x7 windows
        nh, nw = h // win, w // win
        q2 = self.q2(x).reshape(b, nh, win, nw, win, heads, d).permute(0, 5, 1, 3, 2, 4, 6)
        q2 = q2.reshape(b, heads, nh * nw, win * win, d)
        kv2 = self.kv2(x).reshape(b, nh, win, nw, win, 2, heads, d).permute(5, 0, 6, 1, 3, 2, 4, 7)
        k2, v2 = kv2.reshape(2, b, heads, nh * nw, win * win, d).unbind(0)
        attn2 = ((q2 * self.scale) @ k2.transpose(-2, -1)).softmax(dim=-1)
        x2 = self.attn_drop(attn2) @ v2  # (b, heads, windows, 49, d)
        x2 = x2.reshape(b, heads, nh, nw, win, win, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, n, c // 2)

        out = self.output(torch.cat([x1, x2], dim=-1), self.lepe(x))
        return out, self._significance(attn1.detach(), attn2.detach())

    def _significance(self, attn1: torch.Tensor, attn2: torch.Tensor) -> torch.Tensor:
        """Mean attention each token receives (over heads, then queries), local + global, (B, H, W)."""
        b = attn1.shape[0]
        h, w = self.grid
        r, win = self.sr_ratio, self.window
        # one reduction over heads and queries together: a single pass over each probability tensor
        glob = attn1.mean(dim=(1, 2)).reshape(b, h // r, 1, w // r, 1)
        glob = glob.expand(b, h // r, r, w // r, r).reshape(b, h, w)
        local = attn2.mean(dim=(1, 3)).reshape(b, h // win, w // win, win, win)
        local = local.permute(0, 1, 3, 2, 4).reshape(b, h, w)
        return local + glob


class GuidedAttention(_SplitHeadAttention):
    """Keys/values aggregated from tokens sorted by the previous block's significance map.

    ``groupers[i]`` merges groups of ``group_sizes[i]`` consecutive sorted tokens over the share ``splits[i]``
    of them (least significant first); which key each rank feeds is fixed by the grid at build time.
    """

    def build(self, dim: int, sr_ratio: int, qkv_bias: bool) -> None:
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        group_sizes = [g for g in GROUP_LENGTHS[sr_ratio] if g is not None]
        self.groupers = nn.ModuleList(nn.Linear(g, 1) for g in group_sizes)
        self.splits = (1 / 4, 1 / 2, 1 / 4) if len(group_sizes) == 3 else (1 / 2, 1 / 2)
        keys_per_grouper, ranks_to_keys = [], []
        for frac, group in zip(self.splits, group_sizes, strict=True):
            size = int(self.num_tokens * frac)  # the ranks this grouper merges, after the previous ones'
            ranks_to_keys.append(sum(keys_per_grouper) + torch.arange(size) // group)
            keys_per_grouper.append(size // group)
        self.keys_per_grouper: list[int] = keys_per_grouper
        self.num_groups = sum(keys_per_grouper)
        # static index maps (not in the state dict): the key each sorted rank feeds, and the row-major token
        # at each column-major position (so the column-major half reads x in place, without a copy)
        h, w = self.grid
        group_of_rank = torch.cat(ranks_to_keys)
        cols_to_rows = torch.arange(h * w).reshape(h, w).t().reshape(-1)
        self.register_buffer("group_of_rank", group_of_rank, persistent=False)
        self.register_buffer("cols_to_rows", cols_to_rows, persistent=False)

    def _aggregate(
        self, x: torch.Tensor, order: torch.Tensor, weight_of_rank: torch.Tensor, bias_of_group: torch.Tensor
    ) -> torch.Tensor:
        """Merge groups of consecutive ranks (``order``: rank -> token of ``x``) into keys -> (B, M, C).

        Each token is scaled by its rank's grouper weight and added into its key in place (``scatter_add``):
        no sorted copy of the tokens, and a backward of one ``gather`` instead of zero-filled scatters.
        """
        b, n, c = x.shape[0], self.num_tokens, self.dim
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
        key = self.group_of_rank[rank].unsqueeze(-1).expand(b, n, c)
        scaled = x * weight_of_rank[rank].unsqueeze(-1)
        keys = scaled.new_zeros((b, self.num_groups, c)).scatter_add(1, key, scaled)
        return keys + bias_of_group.unsqueeze(-1)

    def forward(
        self, x: torch.Tensor, significance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if significance is None:
            raise RuntimeError("a guided block needs the significance map of the hybrid block before it")
        b, n, c = x.shape[0], self.num_tokens, self.dim
        heads, d = self.num_heads // 2, self.head_dim
        q = self.q(x).reshape(b, n, self.num_heads, d).transpose(1, 2)
        order_rows = torch.sort(significance.reshape(b, n), dim=1)[1]
        order_cols = self.cols_to_rows[torch.sort(significance.transpose(1, 2).reshape(b, n), dim=1)[1]]
        weights, biases = [], []
        for i, layer in enumerate(self.groupers):
            groups = self.keys_per_grouper[i]
            weights.append(layer.weight.reshape(-1).repeat(groups))
            biases.append(layer.bias.expand(groups))
        weight_of_rank, bias_of_group = torch.cat(weights), torch.cat(biases)
        seq1 = self._aggregate(x, order_rows, weight_of_rank, bias_of_group)
        seq2 = self._aggregate(x, order_cols, weight_of_rank, bias_of_group)
        kv1 = self.kv1(seq1).reshape(b, -1, 2, heads, d)
        kv2 = self.kv2(seq2).reshape(b, -1, 2, heads, d)
        k, v = torch.cat([kv1, kv2], dim=3).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.sdpa(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.output(out, self.lepe(x)), None


class Block(nn.Module):
    """Pre-norm transformer block; returns (tokens, significance map or None)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        kind: str,
        grid: tuple[int, int],
        sr_ratio: int,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
        norm_eps: float,
    ):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        if kind == "full":
            self.attn: nn.Module = FullAttention(dim, num_heads, grid, qkv_bias, attn_drop, drop)
        else:
            attn_cls = HybridAttention if kind == "hybrid" else GuidedAttention
            self.attn = attn_cls(dim, num_heads, grid, sr_ratio, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), grid, drop)

    def forward(
        self, x: torch.Tensor, significance: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, significance = self.attn(self.norm1(x), significance)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, significance


class SGFormerStage(nn.Module):
    """One stage: ``downsample`` (the stem for the first) -> alternating blocks -> ``norm``; map in, map out.

    ``name`` ("block1", ...) prefixes the significance maps the stage records ("block1.0", the reference's
    block names), so explanations read the same names as before the stages existed.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        grid: tuple[int, int],
        index: int,
        qkv_bias: bool,
        proj_drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        norm_eps: float,
    ):
        super().__init__()
        self.grid = grid
        self.name = f"block{index + 1}"
        self.grad_checkpointing = False
        self.downsample = Stem(in_dim, dim) if index == 0 else Downsample(in_dim, dim)
        self.blocks = nn.ModuleList(
            Block(
                dim,
                num_heads,
                mlp_ratio,
                _block_kind(j, sr_ratio),
                grid,
                sr_ratio,
                qkv_bias,
                proj_drop,
                attn_drop,
                drop_path[j],
                norm_eps,
            )
            for j in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        pos_embed: torch.Tensor | None = None,
        recorder: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C, H', W'); ``recorder`` (a dict) receives each hybrid block's map."""
        x = self.downsample(x)
        if pos_embed is not None:
            x = x + pos_embed
        significance: torch.Tensor | None = None
        for j, blk in enumerate(self.blocks):
            if not torch.jit.is_scripting() and self.grad_checkpointing and self.training:
                x, significance = torch.utils.checkpoint.checkpoint(blk, x, significance, use_reentrant=False)
            else:
                x, significance = blk(x, significance)
            if recorder is not None and significance is not None:
                recorder[self.name + "." + str(j)] = significance
        return _tokens_to_map(self.norm(x), self.grid)


@register_notrace_function
def check_sgformer_input(x: torch.Tensor, in_chans: int, img_size: tuple[int, int]) -> None:
    """Refuse inputs the model cannot serve, before any layer sees them. A leaf for FX tracing (timm's
    notrace functions; FX wraps only public names, hence no leading underscore)."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise InputSizeError(
            f"SG-Former expects a (B, {in_chans}, H, W) image batch, got shape {tuple(x.shape)}."
        )
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    if hw != img_size:
        built = f"{img_size[0]}x{img_size[1]}"
        if all(s > 0 and s % SIZE_UNIT == 0 for s in hw):
            hint = f"build the model with img_size={hw} (checkpoints are resized on load) or resize inputs to {built}"
        else:
            hint = f"{_size_hint()}; resize inputs to {built}"
        raise InputSizeError(f"This SG-Former was built for {built} inputs but got {hw[0]}x{hw[1]}: {hint}.")


class SGFormer(nn.Module):
    """SG-Former backbone + linear head, laid out as timm's hierarchical models (``stages``, NCHW features).

    ``forward_features`` returns the normalised last-stage map (B, C, H/32, W/32); ``forward_head`` averages
    it and applies the head. The released checkpoints' flat names (``patch_embed1``, ``block1.0``, ``norm1``)
    are renamed on load by ``checkpoint_filter_fn`` (timm, ``medsg.models.load_checkpoint``) and by a
    ``load_state_dict`` pre-hook (fold checkpoints and packages saved before the stages existed).

    Args follow timm: ``drop_rate`` is dropout before the head, ``proj_drop_rate`` dropout inside the
    blocks (the reference called that one ``drop_rate``), ``norm_eps`` the eps of the block and stage
    LayerNorms (stem, sr and GroupNorm layers keep PyTorch's 1e-5, as in the reference).
    ``img_size`` is an int or (H, W), each a positive multiple of 224.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        qkv_bias: bool = True,
        depths: Sequence[int] = (2, 4, 16, 1),
        sr_ratios: Sequence[int] = SR_RATIOS,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.img_size = _to_hw(img_size)
        _check_config(embed_dims, num_heads, mlp_ratios, depths, sr_ratios, global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_stages = len(depths)
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.embed_dim = self.num_features  # name the reference's reset_classifier looked for
        self.grad_checkpointing = False
        self.feature_info = [
            dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}") for i, dim in enumerate(embed_dims)
        ]
        # records {"block<stage>.<index>": significance map} while not None (medsg.explain.significance_maps)
        self.significance_recorder: dict[str, torch.Tensor] | None = None

        dpr = torch.linspace(
            0, drop_path_rate, sum(depths), device="cpu"
        ).tolist()  # also under a meta device
        stages, cur = [], 0
        for i in range(self.num_stages):
            stages.append(
                SGFormerStage(
                    in_chans if i == 0 else embed_dims[i - 1],
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    mlp_ratios[i],
                    sr_ratios[i],
                    self.grid(i),
                    i,
                    qkv_bias,
                    proj_drop_rate,
                    attn_drop_rate,
                    dpr[cur : cur + depths[i]],
                    norm_eps,
                )
            )
            cur += depths[i]
        self.stages = nn.ModuleList(stages)
        grid = self.pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dims[0]))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()
        self.register_load_state_dict_pre_hook(_rename_reference_keys_hook)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    # ----------------------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """Reference init: trunc-normal linears, He-style convs, sin-cos position embedding."""
        self.apply(_init_module)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dims[0], self.pos_grid).unsqueeze(0))

    @torch.jit.unused
    def grid(self, i: int) -> tuple[int, int]:
        """(H, W) of stage ``i``'s token grid (stride 4 * 2**i)."""
        return self.img_size[0] // (4 * 2**i), self.img_size[1] // (4 * 2**i)

    @property
    def pos_grid(self) -> tuple[int, int]:
        """(H, W) of the stage-1 token grid (stride 4) that ``pos_embed`` covers; checkpoints resize to it."""
        return self.grid(0)

    __jit_unused_properties__ = ["pos_grid"]

    # ------------------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory exempts from weight decay: the position embedding, which is
        a fixed sin-cos init that decay would only shrink towards zero."""
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Stem = pos_embed + the first stage's downsample; then one group per stage (coarse) or per block."""
        if coarse:
            blocks = [(r"^stages\.(\d+)", None)]
        else:
            blocks = [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)\.", None),
                (r"^stages\.(\d+)\.norm", (99999,)),
            ]
        return dict(stem=r"^(?:pos_embed|stages\.0\.downsample\.)", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (training only) to trade compute for activation memory,
        e.g. for 448-px inputs or big batches; called by timm's ``set_grad_checkpointing`` helpers."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The classification head, so timm/fine-tuning code can give it its own learning rate or inspect it."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New linear head for ``num_classes`` (0: identity), on the model's device and dtype."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ConfigError(f"global_pool must be 'avg' or '', got {global_pool!r}.")
            self.global_pool = global_pool
        ref = self.pos_embed
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head = head.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> dict:
        """Called by timm for ``pretrained=True``: load a local file through medsg's checkpoint loader."""
        return load_checkpoint(self, checkpoint_path, use_ema=True)

    @staticmethod
    def rename_checkpoint_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The released checkpoints' flat names (patch_embed1, block1.0, norm1) in this model's stage layout;
        ``medsg.models.checkpoint`` asks the model for this, so it never imports this module."""
        return rename_reference_keys(state_dict)

    # ------------------------------------------------------------------------------- forward
    @torch.jit.ignore
    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the model cannot serve, naming the sizes it can."""
        check_sgformer_input(x, self.in_chans, self.img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> normalised last-stage map (B, C, H/32, W/32), before pooling."""
        if not torch.jit.is_scripting():
            check_sgformer_input(x, self.in_chans, self.img_size)
        for i, stage in enumerate(self.stages):
            x = stage(x, self.pos_embed if i == 0 else None, self.significance_recorder)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Map (B, C, H, W) -> logits (B, num_classes); ``pre_logits=True`` stops after pooling and dropout
        and returns the (B, C) embedding (for feature extraction or a custom head)."""
        if self.global_pool == "avg":
            x = x.flatten(2).mean(dim=2)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images at the built size -> logits; split in two so timm can reuse either half."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style: per-stage (B, C, H, W) maps (after each stage's norm); ``norm`` is a no-op."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}.")
        check_sgformer_input(x, self.in_chans, self.img_size)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if not (stop_early or intermediates_only) else self.stages[: max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x, self.pos_embed if i == 0 else None, self.significance_recorder)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages after the last wanted intermediate (for timm's feature wrappers)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        self.num_features = self.head_hidden_size = self.embed_dims[max_index]
        if prune_head or max_index < self.num_stages - 1:
            self.reset_classifier(0, "")
        return take_indices


def _block_kind(index: int, sr_ratio: int) -> str:
    if sr_ratio == 1:
        return "full"
    return "hybrid" if index % 2 == 0 else "guided"


def _check_config(embed_dims, num_heads, mlp_ratios, depths, sr_ratios, global_pool) -> None:
    lengths = {len(embed_dims), len(num_heads), len(mlp_ratios), len(depths), len(sr_ratios)}
    if lengths != {4}:
        raise ConfigError("embed_dims, num_heads, mlp_ratios, depths and sr_ratios must each have 4 entries.")
    if tuple(sr_ratios) != SR_RATIOS:
        raise ConfigError(
            f"sr_ratios must be {list(SR_RATIOS)}: the token-grouping layers are tied to them, got {list(sr_ratios)}."
        )
    if any(d % 2 for d in depths[:3]) or min(depths) < 1:
        raise ConfigError(
            f"depths of stages 1-3 must be even (hybrid and guided blocks alternate), got {list(depths)}."
        )
    if global_pool not in ("avg", ""):
        raise ConfigError(f"global_pool must be 'avg' or '', got {global_pool!r}.")


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


_REFERENCE_KEY = re.compile(r"^(patch_embed|block|norm)(\d+)\.(.*)$")
_GROUPER_KEY = re.compile(r"\.attn\.f([123])\.")


def rename_reference_key(key: str) -> str:
    """A released checkpoint's key (also medsg's before ``stages``) -> this layout's; other keys unchanged.

    ``patch_embed2.x`` -> ``stages.1.downsample.x``, ``block3.5.x`` -> ``stages.2.blocks.5.x``, ``norm4.x`` ->
    ``stages.3.norm.x``, ``mlp.dwconv.dwconv`` -> ``mlp.dwconv``, ``attn.f1`` -> ``attn.groupers.0``.
    """
    match = _REFERENCE_KEY.match(key)
    if match:
        kind, number, rest = match.groups()
        stage = f"stages.{int(number) - 1}"
        if kind == "block":
            index, rest = rest.split(".", 1)
            key = f"{stage}.blocks.{index}.{rest}"
        else:
            key = f"{stage}.{'downsample' if kind == 'patch_embed' else 'norm'}.{rest}"
    key = key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
    return _GROUPER_KEY.sub(lambda m: f".attn.groupers.{int(m.group(1)) - 1}.", key)


def rename_reference_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``rename_reference_key`` over a state dict (order kept)."""
    return {rename_reference_key(k): v for k, v in state_dict.items()}


def _rename_reference_keys_hook(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    """``load_state_dict`` pre-hook: fold checkpoints and packages saved with the flat names still load."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + rename_reference_key(key[len(prefix) :])
        if new != key:
            state_dict[new] = state_dict.pop(key)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SGFormer) -> dict[str, torch.Tensor]:
    """Adapt a reference/medsg state dict to ``model``: the reference's names renamed, wrapper prefixes
    stripped, pos_embed resized to the model's grid, a head of another size dropped."""
    return adapt_state_dict(state_dict, model)[0]


def _create_sgformer(variant: str, pretrained: bool = False, **kwargs: Any) -> SGFormer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        cfg = kwargs.get("pretrained_cfg")
        has_file = overlay.get("file") or (isinstance(cfg, dict) and cfg.get("file"))
        if not has_file and not overlay.get("state_dict"):
            raise CheckpointError(
                f"{variant} has no downloadable weights; pass the local checkpoint with "
                "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')."
            )
        # timm resets custom_load when a file is given; keep it so timm calls SGFormer.load_pretrained
        overlay["custom_load"] = True
    model = build_model_with_cfg(
        SGFormer,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )
    inner = getattr(model, "model", model)
    if isinstance(inner, SGFormer):
        model.pretrained_cfg = dict(
            model.pretrained_cfg,
            input_size=(inner.in_chans, *inner.img_size),
            pool_size=(inner.img_size[0] // 32, inner.img_size[1] // 32),
        )
        model.default_cfg = model.pretrained_cfg
    return model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.downsample.conv.0.c",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2308.12216",
        **kwargs,
    }


# no url / hf_hub: weights are only ever read from a local file (pretrained_cfg_overlay=dict(file=...))
default_cfgs = generate_default_cfgs(
    {
        "sgformer_s": _cfg(),
        "sgformer_m": _cfg(),
        "sgformer_b": _cfg(),
        "sgformer_tiny": _cfg(),
        "sgformer_xs": _cfg(),
    }
)

_TINY = dict(
    embed_dims=(16, 32, 64, 128),
    num_heads=(2, 2, 4, 4),
    mlp_ratios=(2, 2, 2, 2),
    depths=(2, 2, 4, 1),
)
_XS = dict(_TINY, embed_dims=(32, 64, 128, 256), num_heads=(2, 2, 4, 8))


@register_model
def sgformer_s(pretrained: bool = False, **kwargs: Any) -> SGFormer:
    """SG-Former-S (paper): dims 64-512, depths 2-4-16-1."""
    args = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 4, 16, 1))
    return _create_sgformer("sgformer_s", pretrained, **dict(args, **kwargs))


@register_model
def sgformer_m(pretrained: bool = False, **kwargs: Any) -> SGFormer:
    """SG-Former-M (paper): dims 64-512, depths 2-6-28-2."""
    args = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 6, 28, 2))
    return _create_sgformer("sgformer_m", pretrained, **dict(args, **kwargs))


@register_model
def sgformer_b(pretrained: bool = False, **kwargs: Any) -> SGFormer:
    """SG-Former-B (paper): dims 96-768, depths 4-6-24-2."""
    args = dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 6, 12, 24), depths=(4, 6, 24, 2))
    return _create_sgformer("sgformer_b", pretrained, **dict(args, **kwargs))


@register_model
def sgformer_tiny(pretrained: bool = False, **kwargs: Any) -> SGFormer:
    """Not from the paper: a 0.50 M-parameter SG-Former (dims 16-128, depths 2-2-4-1) for demos and CPU runs.

    0.50 M with a few-class head (what ``medsg info`` prints); the 1000-class ImageNet head adds 0.13 M.

    Same config as the parity fixture ``sgformer_tiny_expected.pt``; no ImageNet weights exist for it.
    """
    return _create_sgformer("sgformer_tiny", pretrained, **dict(_TINY, **kwargs))


@register_model
def sgformer_xs(pretrained: bool = False, **kwargs: Any) -> SGFormer:
    """Not from the paper: sgformer_tiny at twice the width (dims 32-256), 1.83 M parameters with a few-class head.

    Why: sgformer_tiny underfits BUSI (training loss still ~0.65 after 31 epochs) while SG-Former-S trains at ~4 img/s
    on 2 cores; this size trains at ~22 img/s there (tiny: ~40), so 40 epochs of 5 BUSI folds fit one session.
    No ImageNet weights exist for it.
    """
    return _create_sgformer("sgformer_xs", pretrained, **dict(_XS, **kwargs))
