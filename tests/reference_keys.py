"""The released SG-Former checkpoints' flat key names, made from medsg's (the inverse of
``medsg.models.sgformer.rename_reference_key``), so tests can write reference-format files."""

from __future__ import annotations

import re

import torch

_STAGE_KEY = re.compile(r"^stages\.(\d+)\.(downsample|blocks|norm)\.(.*)$")


def to_reference_key(key: str) -> str:
    """``stages.2.blocks.5.attn.groupers.0.weight`` -> ``block3.5.attn.f1.weight``, and so on."""
    match = _STAGE_KEY.match(key)
    if match:
        index, part, rest = match.groups()
        number = int(index) + 1
        key = {"downsample": f"patch_embed{number}", "norm": f"norm{number}", "blocks": f"block{number}"}[
            part
        ]
        key = f"{key}.{rest}"
    key = key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
    return re.sub(r"\.attn\.groupers\.(\d)\.", lambda m: f".attn.f{int(m.group(1)) + 1}.", key)


def to_reference_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {to_reference_key(k): v for k, v in state_dict.items()}
