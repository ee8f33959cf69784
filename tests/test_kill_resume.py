"""A real ``kill -9`` in the middle of a fold: the rerun resumes and ends with the same predictions.

The in-process resume tests interrupt at a chosen point; this one kills an actual ``medsg run`` process at
whatever instant it has reached, which is what a pre-empted cluster job or a power cut does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medsg.demo import make_synthetic_busi

EPOCHS = 12

pytestmark = pytest.mark.e2e  # trains a model end to end


def _kill_config(write_config, data_root: Path, out: Path, splits: Path) -> Path:
    """``out.yaml`` beside ``out``: one run of ``EPOCHS`` epochs writing into ``out``, the split file shared."""
    kill = {
        "experiment.name": "kill",
        "experiment.seed": 3,
        "experiment.output_dir": out,
        "splits.seed": 0,
        "splits.file": splits,
        "train.epochs": EPOCHS,
        "train.warmup_epochs": 1,
        "explain.cases_per_fold": 0,
    }
    return write_config(data_root, out, kill, path=out.parent / f"{out.name}.yaml")


def _medsg(config: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "medsg.cli", "-q", "run", str(config), "--fold", "0"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs_logged(fold_dir: Path) -> int:
    history = fold_dir / "history.csv"
    return len(pd.read_csv(history)) if history.is_file() else 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_kill_9_mid_fold_then_rerun_matches_uninterrupted_run(tmp_path, write_config):
    data_root = make_synthetic_busi(tmp_path / "data", n_per_class=8, size=32, seed=2)
    splits = tmp_path / "splits.json"

    reference = _medsg(_kill_config(write_config, data_root, tmp_path / "reference", splits))
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    killed_config = _kill_config(write_config, data_root, tmp_path / "killed", splits)
    fold_dir = tmp_path / "killed" / "kill" / "fold_0"
    victim = _medsg(killed_config)
    deadline = time.monotonic() + 300
    while _epochs_logged(fold_dir) < 2 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed: raise EPOCHS"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (fold_dir / "DONE").exists()
    assert (fold_dir / ".lock").exists()  # left behind by the dead process; the rerun must take it over

    rerun = _medsg(killed_config)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert (fold_dir / "DONE").exists()

    expected = pd.read_csv(tmp_path / "reference" / "kill" / "fold_0" / "predictions.csv")
    resumed = pd.read_csv(fold_dir / "predictions.csv")
    pd.testing.assert_frame_equal(resumed, expected)
    history = pd.read_csv(fold_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
