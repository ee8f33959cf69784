"""Safe loading of SG-Former checkpoints: the reference trainer's format, plain state dicts, medsg runs, packages.

This is medsg's one checkpoint reader: training resumes (``medsg.train.state``), ``medsg explain``, ``predict``,
``evaluate`` and exported packages all read weights through ``read_checkpoint``. ``.safetensors`` files (what
``medsg export`` writes: tensors only, no pickle at all) are read with safetensors; everything else with
``torch.load(weights_only=True)``.

The reference trainer saves ``{'state_dict', 'state_dict_ema', 'optimizer', 'args': argparse.Namespace,
...}``. We read it with ``torch.load(weights_only=True)`` and allow exactly one extra class,
``argparse.Namespace`` (an inert attribute bag), so a pickle that would run code is refused.

The allowance is scoped (``torch.serialization.safe_globals`` around our own ``torch.load``), never
registered process-wide: importing medsg must not widen what other code's ``torch.load`` accepts. timm's
``create_model(..., checkpoint_path=...)`` needs no help: timm >= 1.0.26 wraps its own weights-only load in
the same scoped ``safe_globals([argparse.Namespace])`` (and older timm loaded with ``weights_only=False``,
where an allowlist has no effect). ``pretrained=True`` goes through ``SGFormer.load_pretrained``, i.e. here.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsg.core.errors import CheckpointError
from medsg.core.io import atomic_write_bytes

__all__ = [
    "read_checkpoint",
    "select_state_dict",
    "adapt_state_dict",
    "load_checkpoint",
    "load_exact",
    "save_safetensors",
]

_log = logging.getLogger(__name__)
_SAFE_GLOBALS = [argparse.Namespace]  # allowed only inside read_checkpoint (see module docstring)
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


def head_prefix(model: nn.Module) -> str:
    """The classifier's key prefix (``head.`` for SG-Former, ``classifier.`` for MobileNetV3), from timm's
    ``pretrained_cfg['classifier']``."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    name = name[0] if isinstance(name, (list, tuple)) else name
    return str(name).split(".")[0] + "."


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` a checkpoint on CPU with weights_only=True (+ argparse.Namespace); refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint file not found: {path}. Check the path (it must be a local file)."
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure here means "not a safe weights file"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's first line advises weights_only=False, the opposite of what to do; the GLOBAL line says why
        first = next(
            (line for line in lines if "GLOBAL" in line), type(err).__name__ if not lines else lines[0]
        )
        if "weights_only" in first and "False" in first:
            first = type(err).__name__
        raise CheckpointError(
            f"Refusing to load {path}: it is not a plain weights file that loads safely with "
            f"torch.load(weights_only=True) ({first}). It may be corrupt, or contain pickled objects that "
            "could run code. Only load checkpoints from a trusted source, re-saved as a state dict."
        ) from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file as a CPU state dict; a damaged file is a ``CheckpointError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"Refusing to load {path}: it is not a readable safetensors file ({err}). Export the model again."
        ) from None


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a state dict as ``.safetensors`` (tensors only), atomically; shared storage is copied apart."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return atomic_write_bytes(path, save(tensors))


def select_state_dict(checkpoint: Any, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """Pick the weights out of a checkpoint: EMA first when asked and present, else the raw weights."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"Checkpoint holds a {type(checkpoint).__name__}, expected a dict of weights.")
    candidates = (
        ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else ("state_dict", "model")
    )
    for key in candidates:
        if isinstance(checkpoint.get(key), dict):
            return _tensors_only(checkpoint[key], key), key
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint), "(plain state dict)"
    raise CheckpointError(
        f"Checkpoint has no weights under {list(candidates)} and is not a plain state dict "
        f"(top-level keys: {sorted(map(str, checkpoint))[:10]})."
    )


def backbone_coverage(model: nn.Module, path: str | os.PathLike, use_ema: bool = True) -> tuple[int, int]:
    """(how many of ``model``'s backbone entries the file names, how many there are), by name only.

    The classifier head and BatchNorm's ``num_batches_tracked`` counters are left out (a new task replaces the
    one; older files lack the other), and shapes are not compared, since a loader may resize (a ViT's position
    embedding at another input size). Raises ``CheckpointError`` for a file that is no safe checkpoint."""
    state_dict, _ = select_state_dict(read_checkpoint(path), use_ema=use_ema)
    names = set(_renamed_for(model, _strip_prefixes(state_dict)))
    head = head_prefix(model)
    wanted = [
        k for k in model.state_dict() if not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    return sum(k in names for k in wanted), len(wanted)


def _tensors_only(state_dict: dict, key: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"Checkpoint entry '{key}' holds non-tensor values, e.g. {bad[:5]}.")
    return dict(state_dict)


def _renamed_for(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SG-Former's state dict with the released checkpoints' flat names (patch_embed1, block1.0, norm1;
    also medsg's fold checkpoints and packages from before the stages) renamed to its stage layout."""
    # a model that knows older names of its own keys says so (SGFormer.rename_checkpoint_keys); asking the
    # model keeps this generic loader free of any model module, so models may import it, never the reverse
    rename = getattr(model, "rename_checkpoint_keys", None)
    return rename(state_dict) if callable(rename) else state_dict


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wrapper prefixes removed in any order and nesting (``_orig_mod.module.`` of torch.compile over DDP)."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def resize_pos_embed(pos_embed: torch.Tensor, new_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a (1, N, C) position embedding from its square grid to ``new_hw``."""
    n, c = pos_embed.shape[-2:]
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"pos_embed with {n} positions is not a square grid; cannot resize it.")
    grid = pos_embed.reshape(1, side, side, c).permute(0, 3, 1, 2).to(torch.float64)
    grid = F.interpolate(grid, size=new_hw, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], c).to(pos_embed.dtype)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Fit a state dict to ``model``: strip wrapper prefixes, rename an SG-Former's reference keys, resize
    pos_embed, drop a mismatched head.

    Returns (new state dict, {"dropped": keys removed, "resized": keys interpolated}).
    """
    if isinstance(state_dict, dict) and not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        state_dict = select_state_dict(state_dict)[0]
    state_dict = _renamed_for(model, _strip_prefixes(state_dict))
    target = model.state_dict()
    dropped, resized = [], []
    pos = state_dict.get("pos_embed")
    if pos is not None and "pos_embed" in target and pos.shape != target["pos_embed"].shape:
        want = target["pos_embed"]
        grid = getattr(model, "pos_grid", None)
        if pos.ndim == 3 and pos.shape[-1] == want.shape[-1] and grid is not None:
            state_dict["pos_embed"] = resize_pos_embed(pos, grid)
            resized.append("pos_embed")
    for key in [k for k in state_dict if k.startswith(head_prefix(model))]:
        if key not in target or target[key].shape != state_dict[key].shape:
            dropped.append(key)
            del state_dict[key]
    return state_dict, {"dropped": dropped, "resized": resized}


def _mismatch_report(
    state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor], optional_head: str | None = None
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches); with ``optional_head`` (a key prefix) a missing head is fine
    (fine-tuning: it was dropped or is new), without it the head must be there too (inference)."""
    missing = [
        k for k in target if k not in state_dict and not (optional_head and k.startswith(optional_head))
    ]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    return missing, unexpected, shapes


def _mismatch_text(missing: list[str], unexpected: list[str], shapes: list[str], limit: int) -> str:
    """'missing (n): [...]; unexpected (n): [...]; shape mismatch (n): [...]', empty kinds left out."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
    return "; ".join(f"{label} ({len(keys)}): {keys[:limit]}" for label, keys in kinds if keys)


def load_exact(model: nn.Module, path: str | os.PathLike, use_ema: bool = True) -> str:
    """Load weights that must fit ``model`` exactly (inference): nothing dropped, resized or reinitialised.

    ``load_checkpoint`` is for fine-tuning and replaces a head that does not fit; a model that predicts must
    refuse instead, or a package with 7 classes would silently predict 3 with a random head. Returns which
    entry was used ('state_dict_ema', 'state_dict', ...).
    """
    state_dict, source = select_state_dict(read_checkpoint(path), use_ema=use_ema)
    state_dict = _renamed_for(model, _strip_prefixes(state_dict))
    missing, unexpected, shapes = _mismatch_report(state_dict, model.state_dict())
    head = [s for s in shapes if s.startswith(head_prefix(model))]
    if head:
        raise CheckpointError(
            f"{path}: the classifier head does not match the class list ({head[0]}); the weights were "
            "trained for another number of classes. Use the package's own class list, or export it again."
        )
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path} ('{source}') does not fit {type(model).__name__}: "
            + _mismatch_text(missing, unexpected, shapes, limit=5)
            + ". "
            "The architecture recorded with the weights differs from theirs; export the model again."
        )
    model.load_state_dict(state_dict, strict=True)
    return source


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, use_ema: bool = True, new_head: bool = False
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` in place; return (and log) what was dropped/resized/reinitialised.

    ``use_ema`` takes ``state_dict_ema`` when the file has one (the reference's default weights), else
    ``state_dict``. A classifier head whose shape does not fit (e.g. 1000 ImageNet classes into a 3-class
    model) is dropped and the model keeps its fresh head; ``new_head`` drops it even when it fits (transfer
    from another task's classes). Any other mismatch raises CheckpointError.
    """
    head = head_prefix(model)
    state_dict, source = select_state_dict(read_checkpoint(path), use_ema=use_ema)
    state_dict, changes = adapt_state_dict(state_dict, model)
    if new_head:
        changes["dropped"] += [k for k in state_dict if k.startswith(head)]
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    target = model.state_dict()
    missing, unexpected, shapes = _mismatch_report(state_dict, target, optional_head=head)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"Checkpoint {path} ('{source}') does not fit {type(model).__name__}: "
            + _mismatch_text(missing, unexpected, shapes, limit=8)
            + ". "
            "Was it saved for another variant (sgformer_s/m/b/tiny) or another config?"
        )
    model.load_state_dict(state_dict, strict=False)
    reinit = [k for k in target if k.startswith(head) and k not in state_dict]
    report = {"path": str(path), "source": source, **changes, "reinitialised": reinit}
    _log.info(
        "Loaded %s from %s; dropped %s, resized %s, reinitialised %s",
        source,
        path,
        changes["dropped"] or "nothing",
        changes["resized"] or "nothing",
        reinit or "nothing",
    )
    return report
