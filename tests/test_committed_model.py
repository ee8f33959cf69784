"""The model packages committed with the reports work from a fresh clone, as the README shows:
`medsg predict reports/<report>/model some.jpg` (checksums, class list, calibrated ensemble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic import member_raw_probs

from medsg import cli
from medsg.data.manifest import load_manifest
from medsg.deploy.package import load_model

REPORTS = Path(__file__).resolve().parents[1] / "reports"
ISIC_CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
BUSI_CLASSES = ["benign", "malignant", "normal"]


def _skin(rng: np.random.Generator) -> Image.Image:
    """ISIC's own 600x450 RGB."""
    return Image.fromarray(
        np.clip(rng.normal([190, 140, 120], 20, size=(450, 600, 3)), 0, 255).astype(np.uint8)
    )


def _ultrasound(rng: np.random.Generator) -> Image.Image:
    """A BUSI-sized grey-scale frame (BUSI ships 1- and 3-channel PNGs of about 500x500)."""
    return Image.fromarray(np.clip(rng.normal(90, 30, size=(480, 560)), 0, 255).astype(np.uint8), mode="L")


PACKAGES = {  # report folder -> (classes in output order, a plausible input, its file name)
    "isic2018_cpu_mobilenetv3_long": (ISIC_CLASSES, _skin, "some.jpg"),
    "busi_cpu_mobilenetv3_byol_hpt_distill": (BUSI_CLASSES, _ultrasound, "some.png"),
}


@pytest.mark.parametrize("report", sorted(PACKAGES))
def test_a_committed_package_loads_and_predicts(report: str, tmp_path: Path) -> None:
    package = REPORTS / report / "model"
    classes, make_image, name = PACKAGES[report]
    assert package.is_dir(), f"{package} is committed with its report and must be in every clone"
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"the package is {size / 2**20:.1f} MiB; the README promises under 20 MiB"
    bundle = load_model(package)  # verifies every checksum
    assert bundle.class_names == classes and len(bundle.members) >= 5
    make_image(np.random.default_rng(0)).save(tmp_path / name)
    out = tmp_path / "preds"
    assert cli.main(["predict", str(package), str(tmp_path / name), "--out", str(out)]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    probs = row[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6) and row["predicted"] in classes


def test_every_committed_package_is_tested() -> None:
    """A package committed beside a report and missing from PACKAGES would go untested: say so."""
    committed = {p.parent.parent.name for p in REPORTS.glob("*/model/package.json")}
    assert committed == set(PACKAGES), f"add these to PACKAGES: {sorted(committed - set(PACKAGES))}"


@pytest.mark.slow
@pytest.mark.parametrize("report", sorted(PACKAGES))
def test_a_committed_package_repeats_its_cross_validation_from_the_image_files(report: str, shared) -> None:
    """Each fold member, fed its own test fold's original files through the predict path (decode, resize,
    normalise: no MONAI cache, no run folder), gives the out-of-fold probabilities its cross-validation scored,
    to float16-weight rounding. So the package is the model the report measured, preprocessing included."""
    bundle = load_model(REPORTS / report / "model")
    config = bundle.config
    root = shared("data", Path(config.data.root).name)
    paths = load_manifest(config.data.adapter, root).set_index("id")["path"]
    oof = pd.read_csv(bundle.oof_path(), dtype={"id": str})
    columns = [f"p_{c}" for c in bundle.class_names]
    rng = np.random.default_rng(0)
    for member in bundle.select("folds"):
        rows = oof[oof["fold"] == int(member.name)]
        rows = rows.iloc[rng.choice(len(rows), size=min(64, len(rows)), replace=False)]
        got = member_raw_probs(bundle, member, [paths[i] for i in rows["id"]])
        np.testing.assert_allclose(got, rows[columns].to_numpy(), atol=1e-2)  # float16 weights: ~5e-3 seen
        assert (got.argmax(1) == rows[columns].to_numpy().argmax(1)).mean() >= 0.98
