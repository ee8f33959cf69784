"""The import layers of pyproject.toml's import-linter contracts hold, and a back-arrow would be caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(package_parent: Path, config: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` in a fresh interpreter on the medsg package found under ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), "--no-cache"],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_layers_and_no_cycles_hold():
    done = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_a_back_arrow_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "medsg", tmp_path / "medsg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    metrics = tmp_path / "medsg" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom medsg.report import tables  # noqa: E402\n")
    done = lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert done.returncode != 0
    assert "medsg.metrics -> medsg.report.tables" in done.stdout
