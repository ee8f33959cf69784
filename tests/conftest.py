"""Shared test helpers: where the read-only shared data lives (../shared beside the clone).

Locally a test whose fixture file or data set is absent skips. In CI (environment variable ``CI`` set, as CI
services do, with ../shared beside the clone) it fails instead, so a moved or missing fixture cannot turn the
parity tests into silent skips. Real-data tests marked ``slow`` or ``bench`` keep skipping everywhere: CI runs
the default selection, and their data is not expected there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

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
