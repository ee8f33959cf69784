"""A synthetic BUSI-like dataset, so the whole pipeline can be shown without downloading anything.

Images are ultrasound-like speckle with a dark (hypoechoic) lesion: smooth ellipses for ``benign``, irregular
spiculated blobs for ``malignant`` and no lesion for ``normal``. They are written in BUSI's official layout
(``<class>/<class> (N).png`` beside ``<class> (N)_mask.png``), so the real BUSI adapter reads them unchanged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from medsg.config import config_from_dict
from medsg.core.io import atomic_write_bytes, atomic_write_text
from medsg.workflows.experiment import run_experiment

if TYPE_CHECKING:
    from medsg.config import Config

DEMO_CLASSES = ("benign", "malignant", "normal")


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Rayleigh-distributed speckle over a depth-attenuated tissue band, values in [0, 1]."""
    speckle = rng.rayleigh(scale=1.0, size=(size, size))
    depth = np.linspace(1.0, 0.55, size)[:, None]
    layers = 0.5 + 0.15 * np.sin(np.linspace(0, rng.uniform(3, 7) * np.pi, size))[:, None]
    tissue = speckle * depth * layers
    return np.clip(tissue / np.percentile(tissue, 99), 0, 1)


def _lesion_mask(rng: np.random.Generator, size: int, irregular: bool) -> np.ndarray:
    """A boolean lesion mask: an ellipse, or an ellipse whose radius is perturbed by random harmonics."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.35, 0.65, size=2) * size
    ry, rx = rng.uniform(0.10, 0.20, size=2) * size
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    if irregular:
        for harmonic in rng.choice(np.arange(3, 10), size=3, replace=False):
            radius += rng.uniform(0.08, 0.16) * np.sin(harmonic * theta + rng.uniform(0, 2 * np.pi))
    dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return dist <= radius


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_synthetic_case(rng: np.random.Generator, label: str, size: int) -> tuple[Image.Image, Image.Image]:
    """One RGB image and its 1-bit mask for class ``label``."""
    tissue = _speckle(rng, size)
    mask = (
        np.zeros((size, size), dtype=bool)
        if label == "normal"
        else _lesion_mask(rng, size, label == "malignant")
    )
    if mask.any():
        shadow = np.clip(np.cumsum(mask, axis=0), 0, 1) * (label == "malignant") * 0.25  # posterior shadowing
        tissue = tissue * (1 - shadow) * np.where(mask, rng.uniform(0.15, 0.3), 1.0)
    gray = Image.fromarray((tissue * 255).astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(0.8))
    return gray.convert("RGB"), Image.fromarray(mask).convert("1")


def make_synthetic_busi(root: str | Path, n_per_class: int = 24, size: int = 96, seed: int = 0) -> Path:
    """Write a BUSI-layout dataset under ``root`` and return its ``Dataset_BUSI_with_GT`` folder.

    The same ``seed`` always gives the same bytes, so demo runs are repeatable. Existing files are rewritten.
    """
    if n_per_class < 1 or size < 16:
        raise ValueError(
            f"make_synthetic_busi needs n_per_class >= 1 and size >= 16, got {n_per_class}, {size}"
        )
    dataset = Path(root) / "Dataset_BUSI_with_GT"
    rng = np.random.default_rng(seed)
    for label in DEMO_CLASSES:
        for index in range(1, n_per_class + 1):
            image, mask = make_synthetic_case(rng, label, size)
            stem = dataset / label / f"{label} ({index})"
            atomic_write_bytes(stem.with_name(stem.name + ".png"), _png_bytes(image))
            atomic_write_bytes(stem.with_name(stem.name + "_mask.png"), _png_bytes(mask))
    return dataset


def demo_config(out: Path, quick: bool = False) -> Config:
    """The packaged demo config (medsg/configs/demo.yaml), pointed at ``out``."""
    from importlib import resources

    import yaml

    raw = yaml.safe_load(resources.files("medsg").joinpath("configs/demo.yaml").read_text(encoding="utf-8"))
    out = Path(out).resolve()
    name = raw["experiment"]["name"] + ("_quick" if quick else "")
    overrides = [
        f"experiment.name={name}",
        f"data.root={out / 'data'}",
        f"experiment.output_dir={out / 'runs'}",
        f"experiment.report_dir={out / 'reports' / name}",
    ]
    if quick:
        overrides += ["train.epochs=1", "train.warmup_epochs=0", "splits.k=2"]
    cfg = config_from_dict(raw, overrides, source="medsg/configs/demo.yaml", check_paths=False)
    cfg.splits.file = str(out / "data_splits" / cfg.split_file.name)
    return cfg


@dataclass(frozen=True)
class DemoResult:
    """Where ``medsg demo`` put its run folder and its report."""

    run_dir: Path
    report: Path


def run_demo(out: str | Path = "medsg_demo", quick: bool = False, quiet: bool = False) -> DemoResult:
    """``medsg demo``: synthetic BUSI-like data, a short k-fold run of sgformer_tiny, and its report.

    Everything (data, split file, runs, report) goes below ``out``, which ignores itself in git (a
    ``.gitignore`` of ``*``), so a demo run inside a clone leaves no untracked files.
    """
    out = Path(out)
    ignore = out / ".gitignore"
    if not ignore.exists():
        atomic_write_text(ignore, "# written by medsg demo: everything here is generated\n*\n")
    n_per_class = 10 if quick else 24
    make_synthetic_busi(out / "data", n_per_class=n_per_class, size=96, seed=0)
    cfg = demo_config(out, quick)
    run_dir = run_experiment(cfg, quiet=quiet, new_split_expected=True)
    return DemoResult(run_dir=run_dir, report=cfg.report_dir / "report.html")
