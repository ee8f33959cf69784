"""Shared test helpers: where the read-only shared data lives (../shared beside the clone)."""

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared data folder; tests that need it skip when it is absent."""
    return SHARED_DIR
