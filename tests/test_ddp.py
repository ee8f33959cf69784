"""One fold under ``torchrun --nproc_per_node 2`` on CPU (gloo): both ranks train, only rank 0 writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from medsg.demo import make_synthetic_busi
from medsg.train.state import weights_checksum

pytestmark = pytest.mark.e2e  # trains a model end to end


def torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return ["torchrun"]
    return [sys.executable, "-m", "torch.distributed.run"]


def test_ddp_two_cpu_processes_train_one_fold(tmp_path, write_config):
    root = make_synthetic_busi(tmp_path / "data", n_per_class=6, size=32, seed=2)
    ddp = {
        "experiment.name": "ddp",
        "experiment.report_dir": tmp_path / "rep",
        "train.batch_size": 4,
        "eval.bootstrap": 10,
    }
    cfg_path = write_config(root, tmp_path, ddp, path=tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        *torchrun(),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "medsg.cli",
        "run",
        str(cfg_path),
        "--fold",
        "0",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun with 2 gloo processes did not finish in 240 s")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    done = re.findall(r"rank (\d)/2: fold 0 done after (\d+) optimizer steps, weights checksum (\w+)", output)
    steps = {int(r): int(s) for r, s, _ in done}
    checksums = {int(r): c for r, _, c in done}
    assert set(steps) == {0, 1}, output[-3000:]
    fold = tmp_path / "runs" / "ddp" / "fold_0"
    ids = json.loads((fold / "inner_split.json").read_text())
    # Each rank trained on its half of the training images: ceil(ceil(n / 2) / batch) steps, the same on both.
    per_rank = -(-len(ids["train"]) // 2)
    assert steps[0] == steps[1] == -(-per_rank // 4)
    for name in (
        "DONE",
        "metrics.json",
        "predictions.csv",
        "history.csv",
        "checkpoint_last.pt",
        "checkpoint_best.pt",
    ):
        assert (fold / name).is_file(), name
    # The ranks really synchronised: bit-identical weights after training, the ones rank 0 saved.
    saved = torch.load(fold / "checkpoint_last.pt", weights_only=True)["state_dict"]
    assert checksums[0] == checksums[1] == weights_checksum(saved)
    assert len(pd.read_csv(fold / "predictions.csv")) == len(ids["test"])
    assert not list(fold.glob(".*.tmp")) and not (fold / ".lock").exists()
    assert not (tmp_path / "runs" / "ddp" / "fold_1").exists()
