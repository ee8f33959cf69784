"""``medsg bench model``: models measured interleaved in one process, with ratios, GFLOP/s and peak memory."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsg.bench.measure import (
    benchmarked_model,
    device_words,
    format_table,
    forward_gflops,
    matmul_gflops,
    model_throughput,
)
from medsg.core.device import torch_device
from medsg.train.utils import amp_dtype

DEFAULT_COMPARE = ("swin_tiny_patch4_window7_224", "convnext_tiny")
TRAIN_FLOP_FACTOR = 3  # forward + backward (about twice the forward)
MEMORY_CHILD = "--_memory-child"


def _one_round(model: nn.Module, device: torch.device, **kw: Any) -> dict[str, float]:
    """Eval then train images/s of one model, and on CUDA each mode's peak allocated MB (model on the GPU for
    its turn only, so the peak is its own)."""
    out: dict[str, float] = {}
    model.to(device)
    for mode in ("eval", "train"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        out[mode] = model_throughput(model, train=mode == "train", device=device, **kw)
        if device.type == "cuda":
            out[f"{mode}_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "cuda":
        model.to("cpu")
        torch.cuda.empty_cache()
    return out


def compare_models(
    models: dict[str, nn.Module],
    batch_size: int = 8,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    matmul_size: int | None = None,
    **kw: Any,
) -> tuple[dict[str, dict[str, float]], float | None]:
    """Median train and eval images/s (and CUDA peak MB) per model, measured in interleaved rounds so load
    drifts hit all alike, and the median GFLOP/s of a ``matmul_size`` fp32 matmul measured in the same rounds."""
    device = torch.device(device)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    matmul: list[float] = []
    for _ in range(rounds):
        for name, model in models.items():
            for key, value in _one_round(model, device, batch_size=batch_size, **kw).items():
                samples[name].setdefault(key, []).append(value)
        if matmul_size:
            matmul.append(matmul_gflops(device, matmul_size))
    medians = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    return medians, statistics.median(matmul) if matmul else None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: Linux's ``VmHWM``, else ``ru_maxrss``.

    ``VmHWM`` first because on Linux ``ru_maxrss`` of a fresh subprocess starts at its parent's peak (the peak
    of the forked copy is kept through exec); both never go down.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def memory_child(spec: dict[str, Any]) -> dict[str, float]:
    """Peak RSS in MB of eval, then training, of one model, above this process's peak before it was built.
    Meaningful only in a fresh process (``memory_in_subprocess``): the peak never goes down."""
    base = peak_rss_mb()
    model = benchmarked_model(spec["name"], spec["num_classes"], spec["img_size"], spec.get("reference"))
    out = {}
    for mode in ("eval", "train"):
        model_throughput(
            model, spec["batch_size"], spec["img_size"], mode == "train", spec["steps"], spec["warmup"]
        )
        out[f"{mode}_mb"] = peak_rss_mb() - base
    return out


def memory_in_subprocess(spec: dict[str, Any]) -> dict[str, float]:
    """``memory_child(spec)`` in ``python -m medsg.bench --_memory-child SPEC``."""
    cmd = [sys.executable, "-m", "medsg.bench", MEMORY_CHILD, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"memory measurement of {spec['name']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_specs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Label -> what builds and runs it: ``--model``, the reference's first model (``--reference``), then
    ``--compare`` (default ``DEFAULT_COMPARE``), each name once."""
    compare = DEFAULT_COMPARE if args.compare is None else args.compare
    names = list(dict.fromkeys([*args.model, *compare]))
    common = {"num_classes": args.num_classes, "img_size": args.img_size, "batch_size": args.batch_size}
    common |= {"steps": args.steps, "warmup": 1}
    specs = {name: {"name": name, **common} for name in names}
    if args.reference:
        ref = {"name": names[0], "reference": str(args.reference), **common}
        specs = {names[0]: specs[names[0]], f"{names[0]} (reference)": ref, **specs}
    return specs


def run_model(args: argparse.Namespace) -> int:
    device = torch_device(args.device)
    # fixed shapes: cuDNN's autotuned kernels, as in a non-deterministic training run
    torch.backends.cudnn.benchmark = True
    specs = model_specs(args)
    torch.manual_seed(0)
    models = {
        label: benchmarked_model(s["name"], s["num_classes"], s["img_size"], s.get("reference"))
        for label, s in specs.items()
    }
    first = next(iter(models))
    if args.reference:  # the same weights in both: medsg's model reads the reference's flat key names
        models[first].load_state_dict(models[f"{first} (reference)"].state_dict())
    gflop = {label: forward_gflops(model, args.img_size) for label, model in models.items()}
    kw = {"img_size": args.img_size, "steps": args.steps, "amp": args.amp}
    result, matmul = compare_models(models, args.batch_size, args.rounds, device, args.matmul_size, **kw)
    if args.memory and device.type == "cpu":
        for label, spec in specs.items():
            result[label].update(memory_in_subprocess(spec))
    dtype = amp_dtype(device, args.amp)
    print(
        f"Model throughput on {device_words(device)}: batch {args.batch_size}, {args.img_size} px, "
        f"{'fp32' if dtype is None else str(dtype).removeprefix('torch.')}, median of {args.rounds} "
        f"interleaved round(s) of {args.steps} step(s) each; ratios against {first}"
    )
    params = {label: sum(p.numel() for p in m.parameters()) / 1e6 for label, m in models.items()}
    print(throughput_table(result, params))
    if device.type == "cuda":
        print("peak MB: torch.cuda.max_memory_allocated while it trains / evaluates (weights included)")
    elif args.memory:
        print("peak MB: peak RSS of a fresh process per model, above its size before the model was built")
    else:
        print("peak memory on CPU: add --memory (one subprocess per model)")
    size = args.matmul_size
    print(
        f"\nCompute: GFLOP/img counted on one forward (FlopCounterMode), training {TRAIN_FLOP_FACTOR}x that; "
        + (f"{size}x{size} fp32 matmul: {matmul:.1f} GFLOP/s" if matmul else "no matmul measured")
    )
    print(compute_table(result, gflop, matmul))
    return 0


def throughput_table(result: dict[str, dict[str, float]], params: dict[str, float]) -> str:
    """img/s and ratios against the first model (and peak MB when measured), one row per model."""
    first = next(iter(result.values()))
    memory = "train_mb" in first
    header = ["model", "params M", "train img/s", "train ratio", "eval img/s", "eval ratio"]
    header += ["train peak MB", "eval peak MB"] if memory else []
    rows = []
    for label, r in result.items():
        row = [label, f"{params[label]:.1f}", f"{r['train']:.2f}", f"{r['train'] / first['train']:.2f}x"]
        row += [f"{r['eval']:.2f}", f"{r['eval'] / first['eval']:.2f}x"]
        rows.append(row + ([f"{r['train_mb']:.0f}", f"{r['eval_mb']:.0f}"] if memory else []))
    return format_table(header, rows)


def compute_table(result: dict[str, dict[str, float]], gflop: dict[str, float], matmul: float | None) -> str:
    """GFLOP/img, achieved GFLOP/s and its share of the matmul rate, for training and evaluation."""
    header = ["model", "GFLOP/img", "train GFLOP/s", "train % matmul", "eval GFLOP/s", "eval % matmul"]
    rows = []
    for label, r in result.items():
        row = [label, f"{gflop[label]:.2f}"]
        for mode, factor in (("train", TRAIN_FLOP_FACTOR), ("eval", 1)):
            achieved = factor * gflop[label] * r[mode]
            row += [f"{achieved:.1f}", f"{100 * achieved / matmul:.1f}%" if matmul else "-"]
        rows.append(row)
    return format_table(header, rows)
