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

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from medsg.errors import CheckpointError, ConfigError, InputSizeError

__all__ = ["SGFormer", "check_img_size", "valid_img_sizes", "checkpoint_filter_fn", "sincos_pos_embed_2d"]

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
    """Three 3x3 convs (stride 2, 1, 2) to stride 4, then LayerNorm over tokens."""

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
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


class Downsample(nn.Module):
    """Pointwise -> depthwise stride-2 -> pointwise convs between stages (``PatchMerging``)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvNorm(dim, out_dim, 1)
        self.conv2 = ConvNorm(out_dim, out_dim, 3, 2, groups=out_dim)
        self.conv3 = ConvNorm(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.conv3(x).flatten(2).transpose(1, 2)


class _DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)


class Mlp(nn.Module):
    """fc1 -> GELU(x + dwconv(x)) -> fc2."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        local = self.dwconv.dwconv(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        x = self.drop(self.act(x + local))
        return self.drop(self.fc2(x))


class _AttentionBase(nn.Module):
    """Shared parts: head split, locally enhanced positional encoding, output projection."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop_p = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.lepe_linear = nn.Linear(dim, dim)
        self.lepe_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def lepe(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Locally enhanced positional encoding: linear + 3x3 depthwise conv on the token grid."""
        b, n, c = x.shape
        y = self.lepe_linear(x).transpose(1, 2).reshape(b, c, *hw)
        return self.lepe_conv(y).flatten(2).transpose(1, 2)

    def sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Fused attention; attention dropout only in training, as ``nn.Dropout`` would do."""
        p = self.attn_drop_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)

    def output(self, x: torch.Tensor, lepe: torch.Tensor) -> torch.Tensor:
        """Add the positional encoding, then project and drop out (shared by every attention kind)."""
        return self.proj_drop(self.proj(x + lepe))


class FullAttention(_AttentionBase):
    """Plain multi-head attention (last stage)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], significance: torch.Tensor | None):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.sdpa(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.output(out, self.lepe(x, hw)), None


class HybridAttention(_AttentionBase):
    """Half the heads global (strided keys), half local (7x7 windows); returns the significance map."""

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        if num_heads % 2:
            raise ConfigError(f"hybrid attention splits heads in two halves; num_heads={num_heads} is odd.")
        self.sr_ratio = sr_ratio
        self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.q1 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.q2 = nn.Linear(dim, dim // 2, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], significance: torch.Tensor | None):
        b, n, c = x.shape
        h, w = hw
        heads, d, win = self.num_heads // 2, self.head_dim, WINDOW

        # global half: every token attends to the (H/r x W/r) strided summary
        q1 = self.q1(x).reshape(b, n, heads, d).transpose(1, 2)
        pooled = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        k1, v1 = (
            self.kv1(self.act(self.norm(pooled))).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        )
        attn1 = ((q1 @ k1.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x1 = (self.attn_drop(attn1) @ v1).transpose(1, 2).reshape(b, n, c // 2)

        # local half: attention inside non-overlapping 7x7 windows
        nh, nw = h // win, w // win
        q2 = self.q2(x).reshape(b, nh, win, nw, win, heads, d).permute(0, 5, 1, 3, 2, 4, 6)
        q2 = q2.reshape(b, heads, nh * nw, win * win, d)
        kv2 = self.kv2(x).reshape(b, nh, win, nw, win, 2, heads, d).permute(5, 0, 6, 1, 3, 2, 4, 7)
        k2, v2 = kv2.reshape(2, b, heads, nh * nw, win * win, d).unbind(0)
        attn2 = ((q2 @ k2.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x2 = self.attn_drop(attn2) @ v2  # (b, heads, windows, 49, d)
        x2 = x2.reshape(b, heads, nh, nw, win, win, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, n, c // 2)

        out = self.output(torch.cat([x1, x2], dim=-1), self.lepe(x, hw))
        return out, self._significance(attn1.detach(), attn2.detach(), hw)

    def _significance(self, attn1: torch.Tensor, attn2: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Mean attention each token receives (over heads, then queries), local + global, (B, H, W)."""
        b = attn1.shape[0]
        h, w = hw
        r, win = self.sr_ratio, WINDOW
        glob = attn1.mean(1).mean(1).reshape(b, h // r, 1, w // r, 1)
        glob = glob.expand(b, h // r, r, w // r, r).reshape(b, h, w)
        local = attn2.mean(1).mean(2).reshape(b, h // win, w // win, win, win)
        local = local.permute(0, 1, 3, 2, 4).reshape(b, h, w)
        return local + glob


class GuidedAttention(_AttentionBase):
    """Keys/values aggregated from tokens sorted by the previous block's significance map."""

    def __init__(
        self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ):
        super().__init__(dim, num_heads, attn_drop, proj_drop)
        if num_heads % 2:
            raise ConfigError(f"guided attention splits heads in two halves; num_heads={num_heads} is odd.")
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv1 = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv2 = nn.Linear(dim, dim, bias=qkv_bias)
        g1, g2, g3 = GROUP_LENGTHS[sr_ratio]
        self.f1 = nn.Linear(g1, 1)
        self.f2 = nn.Linear(g2, 1)
        if g3 is not None:
            self.f3 = nn.Linear(g3, 1)
        # fraction of the sorted tokens each grouping layer covers (least significant first)
        self.splits = (1 / 4, 1 / 2, 1 / 4) if g3 is not None else (1 / 2, 1 / 2)

    def _aggregate(self, tokens: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Sort tokens by significance and merge consecutive groups with f1/f2/f3 -> (B, M, C)."""
        b, n, c = tokens.shape
        ranked = torch.gather(tokens, 1, order.unsqueeze(-1).expand(b, n, c))
        layers = (self.f1, self.f2, self.f3) if len(self.splits) == 3 else (self.f1, self.f2)
        out, start = [], 0
        for frac, layer in zip(self.splits, layers, strict=True):
            size = int(n * frac)
            group = layer.in_features
            chunk = ranked[:, start : start + size].reshape(b, size // group, group, c)
            out.append(F.linear(chunk.transpose(-1, -2), layer.weight, layer.bias).squeeze(-1))
            start += size
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], significance: torch.Tensor | None):
        if significance is None:
            raise RuntimeError("a guided block needs the significance map of the hybrid block before it")
        b, n, c = x.shape
        h, w = hw
        heads, d = self.num_heads // 2, self.head_dim
        q = self.q(x).reshape(b, n, self.num_heads, d).transpose(1, 2)
        order_rows = torch.sort(significance.reshape(b, n), dim=1)[1]
        order_cols = torch.sort(significance.transpose(1, 2).reshape(b, n), dim=1)[1]
        x_cols = x.reshape(b, h, w, c).transpose(1, 2).reshape(b, n, c)
        seq1 = self._aggregate(x, order_rows)
        seq2 = self._aggregate(x_cols, order_cols)
        kv1 = self.kv1(seq1).reshape(b, -1, 2, heads, d)
        kv2 = self.kv2(seq2).reshape(b, -1, 2, heads, d)
        k, v = torch.cat([kv1, kv2], dim=3).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.sdpa(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.output(out, self.lepe(x, hw)), None


class Block(nn.Module):
    """Pre-norm transformer block; returns (tokens, significance map or None)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        kind: str,
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
            self.attn = FullAttention(dim, num_heads, qkv_bias, attn_drop, drop)
        else:
            attn_cls = HybridAttention if kind == "hybrid" else GuidedAttention
            self.attn = attn_cls(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], significance: torch.Tensor | None):
        y, significance = self.attn(self.norm1(x), hw, significance)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x), hw))
        return x, significance


class SGFormer(nn.Module):
    """SG-Former backbone + linear head. Key names match the released checkpoints.

    ``forward_features`` returns the normalised last-stage tokens (B, N, C); ``forward_head`` averages
    them and applies the head.

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
            dict(num_chs=dim, reduction=4 * 2**i, module=f"block{i + 1}") for i, dim in enumerate(embed_dims)
        ]
        # records {block name: significance map} while not None (see medsg.explain.significance_maps)
        self.significance_recorder: dict[str, torch.Tensor] | None = None

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        for i in range(self.num_stages):
            stem = Stem(in_chans, embed_dims[0]) if i == 0 else Downsample(embed_dims[i - 1], embed_dims[i])
            blocks = nn.ModuleList(
                Block(
                    embed_dims[i],
                    num_heads[i],
                    mlp_ratios[i],
                    _block_kind(j, sr_ratios[i]),
                    sr_ratios[i],
                    qkv_bias,
                    proj_drop_rate,
                    attn_drop_rate,
                    dpr[cur + j],
                    norm_eps,
                )
                for j in range(depths[i])
            )
            cur += depths[i]
            setattr(self, f"patch_embed{i + 1}", stem)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=norm_eps))
        grid = self.pos_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dims[0]))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----------------------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """Reference init: trunc-normal linears, He-style convs, sin-cos position embedding."""
        self.apply(_init_module)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dims[0], self.pos_grid).unsqueeze(0))

    @property
    def pos_grid(self) -> tuple[int, int]:
        """(H, W) of the stage-1 token grid (stride 4) that ``pos_embed`` covers; checkpoints resize to it."""
        return self.img_size[0] // 4, self.img_size[1] // 4

    # ------------------------------------------------------------------------------ timm API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory exempts from weight decay: the position embedding, which is
        a fixed sin-cos init that decay would only shrink towards zero."""
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Stem = pos_embed + patch_embed1; then one group per stage (coarse) or per block."""
        if coarse:
            blocks = [(r"^(?:patch_embed|block|norm)(\d+)", None)]
        else:
            blocks = [
                (r"^patch_embed(\d+)", (0,)),
                (r"^block(\d+)\.(\d+)\.", None),
                (r"^norm(\d+)", (99999,)),
            ]
        return dict(stem=r"^(?:pos_embed|patch_embed1\.)", blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (training only) to trade compute for activation memory,
        e.g. for 448-px inputs or big batches; called by timm's ``set_grad_checkpointing`` helpers."""
        self.grad_checkpointing = enable

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
        self.head = head.to(device=ref.device, dtype=ref.dtype)

    def load_pretrained(self, checkpoint_path: str, prefix: str = "") -> dict:
        """Called by timm for ``pretrained=True``: load a local file through medsg's checkpoint loader."""
        from medsg.models.checkpoint import load_checkpoint

        return load_checkpoint(self, checkpoint_path, use_ema=True)

    # ------------------------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Refuse inputs the model cannot serve, before any layer sees them."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise InputSizeError(
                f"SG-Former expects a (B, {self.in_chans}, H, W) image batch, got shape {tuple(x.shape)}."
            )
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if hw != self.img_size:
            built = f"{self.img_size[0]}x{self.img_size[1]}"
            if all(s > 0 and s % SIZE_UNIT == 0 for s in hw):
                hint = f"build the model with img_size={hw} (checkpoints are resized on load) or resize inputs to {built}"
            else:
                hint = f"{_size_hint()}; resize inputs to {built}"
            raise InputSizeError(
                f"This SG-Former was built for {built} inputs but got {hw[0]}x{hw[1]}: {hint}."
            )

    def _num_active_stages(self) -> int:
        """Stages still present (``prune_intermediate_layers`` may have removed the last ones)."""
        return sum(hasattr(self, f"block{i + 1}") for i in range(self.num_stages))

    def _run_stage(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage i (0-based): image-shaped input -> normalised tokens (B, N, C) and their grid."""
        hw = (self.img_size[0] // (4 * 2**i), self.img_size[1] // (4 * 2**i))
        x = getattr(self, f"patch_embed{i + 1}")(x)
        if i == 0:
            x = x + self.pos_embed
        significance = None
        recorder = self.significance_recorder
        for j, blk in enumerate(getattr(self, f"block{i + 1}")):
            if self.grad_checkpointing and not torch.jit.is_scripting() and self.training:
                x, significance = torch.utils.checkpoint.checkpoint(
                    blk, x, hw, significance, use_reentrant=False
                )
            else:
                x, significance = blk(x, hw, significance)
            if recorder is not None and significance is not None:
                recorder[f"block{i + 1}.{j}"] = significance
        x = getattr(self, f"norm{i + 1}")(x)
        return x, hw

    @staticmethod
    def _to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, N, C) -> map (B, C, H, W): the next stage's conv downsample needs image layout."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> normalised last-stage tokens (B, N, C), before pooling."""
        self.check_input(x)
        stages = self._num_active_stages()
        for i in range(stages):
            x, hw = self._run_stage(i, x)
            if i < stages - 1:
                x = self._to_map(x, hw)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, N, C) -> logits (B, num_classes); ``pre_logits=True`` stops after pooling and dropout
        and returns the (B, C) embedding (for feature extraction or a custom head)."""
        if self.global_pool == "avg":
            x = x.mean(dim=1)
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
        self.check_input(x)
        stages = self._num_active_stages()
        take_indices, max_index = feature_take_indices(stages, indices)
        last = max_index if (stop_early or intermediates_only) else stages - 1
        intermediates = []
        for i in range(last + 1):
            x, hw = self._run_stage(i, x)
            fmap = self._to_map(x, hw)
            if i in take_indices:
                intermediates.append(fmap)
            if i < last:
                x = fmap
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop stages after the last wanted intermediate (for timm's feature wrappers)."""
        take_indices, max_index = feature_take_indices(self._num_active_stages(), indices)
        for i in range(max_index + 1, self.num_stages):
            for name in (f"patch_embed{i + 1}", f"block{i + 1}", f"norm{i + 1}"):
                if hasattr(self, name):
                    delattr(self, name)
        if max_index < self.num_stages - 1:
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


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SGFormer) -> dict[str, torch.Tensor]:
    """Adapt a reference/medsg state dict to ``model`` (prefixes, pos_embed size, mismatched head)."""
    from medsg.models.checkpoint import adapt_state_dict

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
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(inner.in_chans, *inner.img_size))
        model.default_cfg = model.pretrained_cfg
    return model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed1.conv.0.c",
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
    }
)

_TINY = dict(
    embed_dims=(16, 32, 64, 128),
    num_heads=(2, 2, 4, 4),
    mlp_ratios=(2, 2, 2, 2),
    depths=(2, 2, 4, 1),
)


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
