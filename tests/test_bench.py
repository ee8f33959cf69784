"""Benchmarks print ratios and are skipped by default (-m bench runs them); the helpers they use are tested here."""

import os
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from medsg import bench

SHARED = Path(__file__).resolve().parents[2] / "shared"


def test_reference_loader_keeps_medsg_registry(tmp_path):
    # A stand-in for the reference module: it registers a clashing name and needs np.float, like the real one.
    (tmp_path / "sgformer.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import torch.nn as nn
            from timm.models.registry import register_model

            WIDTH = int(np.float(4))

            @register_model
            def sgformer_s(pretrained=False, **kwargs):
                return nn.Linear(WIDTH, 2)
            """
        )
    )
    model = bench.load_reference_model(tmp_path, "sgformer_s")
    assert isinstance(model, torch.nn.Linear) and model.in_features == 4
    assert type(timm.create_model("sgformer_s", num_classes=3)).__name__ == "SGFormer"
    import numpy as np

    assert not hasattr(np, "float")


def test_reference_loader_names_missing_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="OliverRensu/SG-Former"):
        bench.load_reference_model(tmp_path)


def test_model_command_prints_both_modes(capsys):
    assert bench.main(["model", "--variant", "sgformer_tiny", "--rounds", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "sgformer_tiny train images/s" in out and "sgformer_tiny eval images/s" in out


@pytest.mark.bench
def test_bench_pipeline_vs_training_on_busi(capsys):
    root = SHARED / "data" / "busi"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    assert bench.main(["pipeline", "--root", str(root)]) == 0
    print(capsys.readouterr().out)


@pytest.mark.bench
def test_bench_model_vs_reference(capsys):
    reference = os.environ.get("MEDSG_REFERENCE_DIR")
    if not reference:
        pytest.skip("set MEDSG_REFERENCE_DIR to a local checkout of OliverRensu/SG-Former")
    assert bench.main(["model", "--reference", reference]) == 0
    print(capsys.readouterr().out)
