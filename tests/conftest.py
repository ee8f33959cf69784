"""Shared test helpers: where the read-only shared data lives (../shared beside the clone), and the one way
tests build an experiment config (``make_config`` / ``write_config``).

Locally a test whose fixture file or data set is absent skips. In CI (environment variable ``CI`` set, as CI
services do, with ../shared beside the clone) it fails instead, so a moved or missing fixture cannot turn the
parity tests into silent skips. Real-data tests marked ``slow`` or ``bench`` keep skipping everywhere: CI runs
the README's command (``-m 'not slow and not bench'``: the default selection plus the ``e2e`` tests), and their
data is not expected there.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from medsg.config import Config, config_from_dict

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
OPTIONAL_MARKERS = ("slow", "bench")  # tests that may skip for missing data even in CI


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but '', '0' or 'false'."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_shared(*parts: str, required_in_ci: bool = True) -> Path:
    """``SHARED_DIR/<parts>`` if it exists; otherwise skip, or fail in CI when ``required_in_ci``."""
    path = SHARED_DIR.joinpath(*parts)
    if path.exists():
        return path
    message = (
        f"{path} not found (looked in {SHARED_DIR}, i.e. ../shared beside the clone {SHARED_DIR.parent})"
    )
    if required_in_ci and in_ci():
        pytest.fail(f"{message}; CI must provide ../shared with the fixtures and data", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Callable[..., Path]:
    """``shared("fixtures", "x.pt")`` -> the path; skips if absent, fails in CI unless the test is slow/bench."""
    optional = any(request.node.get_closest_marker(m) for m in OPTIONAL_MARKERS)
    return lambda *parts: require_shared(*parts, required_in_ci=not optional)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder itself (existence not checked); prefer ``shared(...)`` for files a test needs."""
    return SHARED_DIR


# ---------------------------------------------------------------------------------------- experiment configs

# What every test config shares: a tiny CPU run in the test's own process (no loader workers, no decode cache)
# on a small synthetic data set, 2 folds of 1 epoch, a short bootstrap. Tests override what they need.
TINY_RUN: dict[str, dict[str, Any]] = {
    "experiment": {"name": "t"},
    "data": {"adapter": "busi", "cache": "none"},
    "splits": {"k": 2, "inner_val_fraction": 0.25},
    "train": {"epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu", "warmup_epochs": 0},
    "eval": {"bootstrap": 20},
}
IMG_SIZE = {"test_vit": 32, "sgformer_tiny": 224}  # model.img_size per model (other models: the schema's)


def experiment_raw(
    data_root: str | Path, out: Path | None = None, *overrides: Mapping[str, Any], model: str = "test_vit"
) -> dict[str, Any]:
    """The raw config: ``TINY_RUN`` with ``data.root``, ``model.name`` (and its ``IMG_SIZE``), and with ``out``
    the run's paths (``out/runs``, ``out/report``, ``out/splits.json``); then each mapping of dotted keys
    (``{"train.epochs": 2}``) in turn. A ``Path`` value is written as its string."""
    raw = copy.deepcopy(TINY_RUN)
    raw["data"]["root"] = str(data_root)
    raw["model"] = {"name": model} | ({"img_size": IMG_SIZE[model]} if model in IMG_SIZE else {})
    if out is not None:
        raw["experiment"].update(output_dir=str(out / "runs"), report_dir=str(out / "report"))
        raw["splits"]["file"] = str(out / "splits.json")
    for values in overrides:
        for key, value in values.items():
            *sections, name = key.split(".")
            node = raw
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = str(value) if isinstance(value, Path) else value
    return raw


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Config]:
    """``make_config(data_root, out=None, *overrides, model="test_vit", check_paths=True) -> Config``: the
    validated config of ``experiment_raw`` (``medsg.config.config_from_dict``, which checks data.root exists
    unless ``check_paths=False``)."""

    def build(
        data_root: str | Path,
        out: Path | None = None,
        *overrides: Mapping[str, Any],
        model: str = "test_vit",
        check_paths: bool = True,
    ) -> Config:
        return config_from_dict(
            experiment_raw(data_root, out, *overrides, model=model), check_paths=check_paths
        )

    return build


@pytest.fixture(scope="session")
def write_config() -> Callable[..., Path]:
    """``write_config(data_root, out, *overrides, model="test_vit", path=None) -> Path``: ``experiment_raw`` as
    a YAML file at ``path`` (default ``out/config.yaml``), for tests that run ``medsg`` on a file."""

    def write(
        data_root: str | Path,
        out: Path,
        *overrides: Mapping[str, Any],
        model: str = "test_vit",
        path: Path | None = None,
    ) -> Path:
        path = path or out / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(experiment_raw(data_root, out, *overrides, model=model)))
        return path

    return write


@pytest.fixture
def interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], Any]], None]:
    """``interrupt_after_first_epoch(run)``: call ``run()`` with every fold interrupted (KeyboardInterrupt)
    right after its first epoch, which leaves ``checkpoint_last.pt`` at epoch 1 as a kill would;
    ``FoldTrainer.fit`` is itself again afterwards."""
    import medsg.train.fold as fold_mod

    real_fit = fold_mod.FoldTrainer.fit

    def fit_one_epoch_then_die(self: fold_mod.FoldTrainer) -> None:
        self.max_epochs = 1  # where fit() stops; the schedule (and the saved config) keep every epoch
        real_fit(self)
        raise KeyboardInterrupt

    def interrupt(run: Callable[[], Any]) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(fold_mod.FoldTrainer, "fit", fit_one_epoch_then_die)
            with pytest.raises(KeyboardInterrupt):
                run()

    return interrupt
