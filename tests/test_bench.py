"""``medsg bench`` on tiny settings (sgformer_tiny, batch 2, 1 step): the tables and their columns, never a time.

Benchmarks on real sizes and data are marked ``bench`` and skipped by default (``-m bench`` runs them).
"""

import os
import textwrap

import pytest
import timm
import torch

from medsg import bench
from medsg.bench.__main__ import main as bench_main
from medsg.bench.epoch import PHASES
from medsg.bench.model import peak_rss_mb
from medsg.cli import main
from medsg.config import config_from_dict
from medsg.demo import demo_config, make_synthetic_busi

TINY = ["--batch-size", "2", "--steps", "1"]


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


def test_bench_model_times_the_reference_with_the_same_weights(tmp_path, capsys):
    # A stand-in for the reference: a model whose state dict has the released checkpoints' flat key names, as
    # the real one's has; the bench gives medsg's model the reference's weights (medsg renames flat keys on load).
    (tmp_path / "sgformer.py").write_text(
        textwrap.dedent(
            """
            import timm
            import torch.nn as nn
            from reference_keys import to_reference_keys

            class Reference(nn.Module):
                def __init__(self, **kwargs):
                    super().__init__()
                    self.inner = timm.create_model("sgformer_tiny", **kwargs)

                def forward(self, x):
                    return self.inner(x)

                def state_dict(self, *args, **kwargs):
                    return to_reference_keys(self.inner.state_dict())

            def sgformer_tiny(pretrained=False, **kwargs):
                return Reference(**kwargs)
            """
        )
    )
    argv = ["bench", "model", "--model", "sgformer_tiny", "--compare", "--reference", str(tmp_path)]
    assert main([*argv, "--rounds", "1", "--matmul-size", "0", *TINY]) == 0
    out = capsys.readouterr().out
    assert "sgformer_tiny (reference)" in out


def test_reference_loader_names_missing_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="OliverRensu/SG-Former"):
        bench.load_reference_model(tmp_path)


def test_bench_model_prints_ratio_gflops_and_share_columns(capsys):
    argv = ["bench", "model", "--model", "sgformer_tiny", "--compare", "test_vit", "--rounds", "1", *TINY]
    assert main([*argv, "--matmul-size", "128", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("model") and "train img/s" in line)
    assert all(c in header for c in ("train ratio", "eval img/s", "eval ratio"))
    compute = next(line for line in lines if line.startswith("model") and "GFLOP/img" in line)
    assert all(c in compute for c in ("train GFLOP/s", "train % matmul", "eval GFLOP/s", "eval % matmul"))
    assert any("128x128 fp32 matmul" in line and "GFLOP/s" in line for line in lines)
    first = [line.split() for line in lines if line.startswith("sgformer_tiny")]
    assert len(first) == 2 and first[0][3] == first[0][5] == "1.00x"  # ratios against itself
    assert first[1][-1].endswith("%") and float(first[1][1]) > 0  # share of the matmul rate; GFLOP/img
    assert sum(line.startswith("test_vit") for line in lines) == 2


def test_bench_unknown_model_is_one_line_error(capsys):
    assert main(["bench", "model", "--model", "no_such_model", "--compare"]) == 2
    assert "'no_such_model' is not a timm model" in capsys.readouterr().err


def test_memory_child_reports_eval_and_train_peaks():
    spec = {"name": "sgformer_tiny", "num_classes": 3, "img_size": 224, "batch_size": 2, "steps": 1}
    out = bench.memory_child({**spec, "warmup": 0})
    assert set(out) == {"eval_mb", "train_mb"} and out["train_mb"] >= out["eval_mb"] >= 0
    assert peak_rss_mb() > 0


def test_bench_pipeline_on_synthetic_busi(tmp_path, capsys):
    make_synthetic_busi(tmp_path, n_per_class=2, size=40, seed=0)
    argv = ["bench", "pipeline", "--root", str(tmp_path), "--model", "sgformer_tiny", *TINY]
    assert main([*argv, "--workers", "0", "--epochs", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "6 busi images" in out and "x training" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"memory", "none"} and all(r[-1].endswith("x") for r in rows.values())


def test_epoch_breakdown_phases_sum_to_total(tmp_path):
    make_synthetic_busi(tmp_path / "data", n_per_class=2, size=40, seed=0)
    raw = demo_config(tmp_path).model_dump(mode="json")
    cfg = config_from_dict(raw, ["train.batch_size=2"], check_paths=False)
    result = bench.epoch_breakdown(cfg, steps=1, limit=6)
    phases = result["phases_s"]
    assert tuple(phases) == PHASES and all(s >= 0 for s in phases.values())
    assert sum(phases.values()) == pytest.approx(result["total_s"], rel=0.05, abs=1e-3)
    assert result["steps"] == 1 and result["n_train_images"] == 2 and result["n_val_images"] == 1


def test_bench_epoch_command_prints_every_phase(capsys):
    assert main(["bench", "epoch", *TINY, "--limit", "3", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "synthetic BUSI" in lines[0] and "1 of " in lines[0]
    assert lines[1].startswith("warm-up, not counted: ")
    assert [line.split()[0] for line in lines[3:9]] == [*PHASES, "total"]


def test_bench_epoch_times_the_configs_own_trainer(capsys, monkeypatch):
    """The bench runs the config's trainer (its pipelines and loss), here the mask-loss recipe, whose loss
    needs the batch's masks: the mask term is computed on every timed step."""
    from medsg.train import mask_aux

    calls = []
    real = mask_aux.mask_loss
    monkeypatch.setattr(mask_aux, "mask_loss", lambda *a: calls.append(a[1].shape) or real(*a))
    argv = ["bench", "epoch", *TINY, "--limit", "3", "--warmup", "0", "--set", "train.mask_loss_weight=1"]
    assert main(argv) == 0
    assert "total" in capsys.readouterr().out
    assert calls == [(2, 1, 224, 224)]  # one timed step of batch 2, with its lesion masks at model size


def test_epoch_warm_up_meets_every_batch_size_before_timing(tmp_path, monkeypatch):
    """The last, smaller training batch and each validation batch size run once untimed (a GPU's one-off cost)."""
    from medsg.train import evaluate
    from medsg.train.fold import FoldTrainer

    make_synthetic_busi(tmp_path / "data", n_per_class=4, size=40, seed=0)
    raw = demo_config(tmp_path).model_dump(mode="json")
    cfg = config_from_dict(raw, ["train.batch_size=4", "splits.inner_val_fraction=0.42"], check_paths=False)
    train_sizes, eval_sizes = [], []
    step, predict = FoldTrainer.train_step, evaluate.predict

    def record_step(self, images, labels, *args, **kwargs):
        train_sizes.append(len(labels))
        return step(self, images, labels, *args, **kwargs)

    def record_predict(model, dataset, *args, **kwargs):
        eval_sizes.append(len(dataset))
        return predict(model, dataset, *args, **kwargs)

    monkeypatch.setattr(FoldTrainer, "train_step", record_step)
    monkeypatch.setattr(evaluate, "predict", record_predict)
    result = bench.epoch_breakdown(cfg, warmup=1)
    n_train, n_val = result["n_train_images"], result["n_val_images"]
    assert (n_train, n_val) == (7, 5)  # training batches of 4 and 3, validation batches of 4 and 1
    assert train_sizes == [4, 3, 4, 3]  # warm-up on a full batch, then on the last batch's size; then timed
    assert eval_sizes == [1, 4, 5]  # one batch of each size, then the timed pass over all of it
    assert result["warmup_s"] > 0


@pytest.mark.bench
def test_bench_model_memory_in_subprocesses(capsys):
    argv = ["model", "--model", "sgformer_tiny", "--compare", "--rounds", "1", *TINY, "--memory"]
    assert bench_main([*argv, "--device", "cpu"]) == 0  # python -m medsg.bench's entry
    out = capsys.readouterr().out
    assert "train peak MB" in out
    print(out)


@pytest.mark.bench
def test_bench_defaults_sgformer_s_beside_swin_and_convnext(capsys):
    assert main(["bench", "model", "--memory"]) == 0
    print(capsys.readouterr().out)


@pytest.mark.bench
def test_bench_pipeline_vs_training_on_busi(shared, capsys):
    root = shared("data", "busi")
    assert main(["bench", "pipeline", "--root", str(root)]) == 0
    print(capsys.readouterr().out)


@pytest.mark.bench
def test_bench_model_vs_reference(capsys):
    reference = os.environ.get("MEDSG_REFERENCE_DIR")
    if not reference:
        pytest.skip("set MEDSG_REFERENCE_DIR to a local checkout of OliverRensu/SG-Former")
    assert main(["bench", "model", "--reference", reference]) == 0
    print(capsys.readouterr().out)


@pytest.mark.bench
def test_bench_conv_parts_of_sgformer_s(capsys):
    """How much of sgformer_s's CPU time is its convolutions (what Swin-T lacks): the same model with Swin-T's
    4x4 patch stem, then also without the depthwise convs of its MLPs and positional encodings, beside swin_tiny.
    Prints ratios; the README's "What is left on CPU" figures come from here."""
    import torch.nn.functional as F
    from torch import nn

    from medsg.bench.measure import forward_gflops
    from medsg.bench.model import compare_models, compute_table, throughput_table
    from medsg.core.malloc import keep_freed_memory
    from medsg.models import sgformer

    keep_freed_memory()  # as `medsg` does

    class PatchStem(nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.proj, self.norm = nn.Conv2d(3, dim, 4, 4), nn.LayerNorm(dim)

        def forward(self, x):
            return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    def variant(patch_stem: bool, depthwise: bool) -> nn.Module:
        model = timm.create_model("sgformer_s", num_classes=3)
        if patch_stem:
            model.stages[0].downsample = PatchStem(model.stages[0].downsample.norm.normalized_shape[0])
        if not depthwise:
            for m in model.modules():
                if isinstance(m, sgformer.Mlp):
                    m.forward = lambda x, m=m: m.fc2(F.gelu(m.fc1(x)))
                elif isinstance(m, sgformer._AttentionBase):
                    m.lepe = m.lepe_linear
        return model

    models = {
        "sgformer_s": variant(False, True),
        "patch stem": variant(True, True),
        "patch stem, no depthwise": variant(True, False),
        "swin_tiny_patch4_window7_224": timm.create_model("swin_tiny_patch4_window7_224", num_classes=3),
    }
    result, _ = compare_models(models, batch_size=8, rounds=5, steps=3)
    params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
    gflop = {k: forward_gflops(m) for k, m in models.items()}
    print("\n" + throughput_table(result, params) + "\n" + compute_table(result, gflop, None))
    assert set(result) == set(models)


def test_bench_imports_neither_cli_nor_commands():
    """medsg.commands.bench imports medsg.bench, never the reverse (only the ``python -m`` script reaches up)."""
    import ast
    from pathlib import Path

    for path in Path(bench.__file__).parent.glob("*.py"):
        if path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(("medsg.cli", "medsg.commands"))], path.name
