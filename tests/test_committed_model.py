"""The model package committed with the ISIC report works from a fresh clone, as the README shows:
`medsg predict reports/isic2018_cpu_sgformer_tiny/model some.jpg` (checksums, class list, calibrated ensemble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medsg import cli
from medsg.deploy.package import load_model

PACKAGE = Path(__file__).resolve().parents[1] / "reports" / "isic2018_cpu_sgformer_tiny" / "model"
ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def test_the_committed_isic_package_loads_and_predicts(tmp_path: Path) -> None:
    assert PACKAGE.is_dir(), f"{PACKAGE} is committed with the ISIC report and must be in every clone"
    size = sum(p.stat().st_size for p in PACKAGE.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"the package is {size / 2**20:.1f} MB; the README promises under 20 MB"
    bundle = load_model(PACKAGE)  # verifies every checksum
    assert bundle.class_names == ISIC_CLASSES and len(bundle.members) >= 5
    rng = np.random.default_rng(0)
    skin = np.clip(rng.normal([190, 140, 120], 20, size=(450, 600, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(skin).save(tmp_path / "some.jpg")  # ISIC's own 600x450
    out = tmp_path / "preds"
    assert cli.main(["predict", str(PACKAGE), str(tmp_path / "some.jpg"), "--out", str(out)]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    probs = row[[f"p_{c}" for c in ISIC_CLASSES]].to_numpy(dtype=float)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6) and row["predicted"] in ISIC_CLASSES
