"""``medsg bench``: tables of figures for this machine; no benchmark passes or fails on time.

* ``model`` (``medsg.bench.model``): train and eval images/s of SG-Former (or any timm model) beside
  swin_tiny and convnext_tiny, measured interleaved in one process (round-robin over rounds, the median per
  model, so load drifts hit all alike) with ratios against the first model; GFLOP per image counted once
  (``FlopCounterMode`` on one forward, training counted as 3x), the achieved GFLOP/s and its share of a fp32
  matmul's rate measured in the same rounds; peak memory (CUDA: ``max_memory_allocated``, always; CPU with
  ``--memory``: ``ru_maxrss``, which never goes down, so each model runs again in a subprocess of its own).
  ``--reference DIR`` times a local checkout of the reference SG-Former beside medsg's (nothing is downloaded).
* ``pipeline`` (``medsg.bench.pipeline``): the training pipeline's images/s (``build_transforms`` +
  ``build_dataset``, masks left out as in training) with and without the MONAI memory cache, against the
  model's training images/s (goal >= 5x).
* ``epoch`` (``medsg.bench.epoch``): where an epoch's time goes (data loading, forward, backward, optimizer
  step, evaluation) for a config or the demo's synthetic setup: ``FoldTrainer.train_step`` phase by phase,
  with the trainer's own optimizer, scheduler, EMA, loss and precision, then its validation pass.

The arguments are defined in ``medsg.commands.bench``, which imports this package (never the reverse);
``python -m medsg.bench ARGS`` is ``medsg bench ARGS`` (``medsg.bench.__main__``).
"""

from __future__ import annotations

import argparse

from medsg.bench.epoch import epoch_breakdown, run_epoch
from medsg.bench.measure import (
    create_model,
    format_table,
    forward_gflops,
    load_reference_model,
    matmul_gflops,
    model_throughput,
)
from medsg.bench.model import DEFAULT_COMPARE, compare_models, memory_child, run_model
from medsg.bench.pipeline import benchmark_pipeline, run_pipeline

__all__ = [
    "DEFAULT_COMPARE",
    "benchmark_pipeline",
    "compare_models",
    "create_model",
    "epoch_breakdown",
    "format_table",
    "forward_gflops",
    "load_reference_model",
    "matmul_gflops",
    "memory_child",
    "model_throughput",
    "run_bench",
]


def run_bench(args: argparse.Namespace) -> int:
    """``medsg bench model | pipeline | epoch``; returns the exit status."""
    return {"model": run_model, "pipeline": run_pipeline, "epoch": run_epoch}[args.bench](args)
