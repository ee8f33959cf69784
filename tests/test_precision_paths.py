"""The GPU-path switches (autocast dtype, channels_last, torch.compile) run on CPU and stay close to fp32.

Tolerances: bf16 keeps 8 bits of mantissa (~3 significant digits), fp16 11 bits; logits of a small model
agree with fp32 to a few percent of their range. channels_last changes only the convolutions' memory order,
so it agrees to float32 rounding. torch.compile fuses kernels: float32 rounding again.
"""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from test_train import Factory, toy_overrides  # noqa: E402  (the toy fold of the trainer tests)

import medsg  # noqa: F401
from medsg.train.kfold import train_one_fold
from medsg.train.utils import amp_dtype, autocast


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = timm.create_model("sgformer_tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = model(x)
    return model, x, reference


def _spread(t: torch.Tensor) -> float:
    return float(t.max() - t.min())


@pytest.mark.parametrize(("name", "tolerance"), [("bfloat16", 0.05), ("float16", 0.01)])
def test_autocast_on_cpu_is_close_to_fp32(tiny, name: str, tolerance: float) -> None:
    model, x, reference = tiny
    dtype = amp_dtype(torch.device("cpu"), True, name)
    assert dtype == getattr(torch, name)
    assert (
        amp_dtype(torch.device("cpu"), True, "auto") is None
    )  # auto stays fp32 on CPU, as every CPU run did
    with torch.no_grad(), autocast(torch.device("cpu"), dtype):
        out = model(x).float()
    assert (out - reference).abs().max() <= tolerance * _spread(reference)


def test_channels_last_is_float32_close(tiny) -> None:
    model, x, reference = tiny
    nhwc = timm.create_model("sgformer_tiny", num_classes=3).eval()
    nhwc.load_state_dict(model.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = nhwc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # inductor compiles C++ kernels on the first call: about a minute here
def test_compiled_model_is_float32_close(tiny) -> None:
    model, x, reference = tiny
    with torch.no_grad():
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "switch",
    [{"amp": True, "amp_dtype": "bfloat16"}, {"amp": True, "amp_dtype": "float16"}, {"channels_last": True}],
    ids=["bf16", "fp16-scaler", "channels-last"],
)
def test_trainer_runs_each_path_close_to_fp32(tmp_path, make_config, switch: dict) -> None:
    """A fold trains under each switch (fp16 with its GradScaler) and its losses stay near the fp32 run's."""
    for out, train in ((tmp_path / "fp32", {}), (tmp_path / "alt", switch)):
        cfg = make_config(out, None, toy_overrides(out, epochs=1, **train), check_paths=False)
        train_one_fold(cfg, 0, Factory(), out)
    fp32 = pd.read_csv(tmp_path / "fp32" / "fold_0" / "history.csv")
    alt = pd.read_csv(tmp_path / "alt" / "fold_0" / "history.csv")
    for column in ("train_loss", "val_loss"):
        assert alt[column].iloc[0] == pytest.approx(fp32[column].iloc[0], rel=0.05), column
