"""Where a result came from: package versions, the machine, and the git checkout the code ran from.

Saved in every run's ``config.yaml``; ``medsg reproduce`` reads it back to name why numbers differ (another
commit, thread count or CPU), and the run refuses to write a report from a tree it cannot trace to a commit.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from medsg.core import __version__


def provenance(device: str = "auto") -> dict[str, Any]:
    """Versions and git hash, so a reader can rebuild the environment of a result. ``device`` is the run's
    ``train.device``: the accelerator recorded is the one it computes on ("cpu" when told to use the CPU on a
    machine with a GPU), and ``world_size`` the number of processes (torchrun's WORLD_SIZE)."""
    import monai
    import numpy
    import PIL
    import timm
    import torch

    cpu = _cpuinfo()
    return {
        "medsg": __version__,
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "monai": str(monai.__version__),
        "numpy": str(numpy.__version__),
        "pillow": str(PIL.__version__),
        "git": git_hash(),
        "clean_tree": git_clean(),
        # what `medsg reproduce` names when results differ: float32 kernels depend on all of these
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(cpu),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),  # the ISA torch's kernels use
        "cpu_simd": cpu_simd_flags(cpu),
        "accelerator": accelerator_of(device),
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
    }


def accelerator_of(device: str) -> str:
    """The name of the device ``train.device`` computes on: a GPU's model, or "cpu"."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    try:
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        return torch.cuda.get_device_name(index)
    except (ValueError, RuntimeError, AssertionError):  # a bad index: refused where the run resolves it
        return f"unknown ({device})"


SIMD_PREFIXES = ("sse", "ssse", "avx", "fma", "f16c", "amx", "neon", "asimd", "sve")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(info: dict[str, str]) -> str:
    """The CPU's model name from ``_cpuinfo()`` (the kernels' rounding depends on it), or what platform says."""
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def cpu_simd_flags(info: dict[str, str]) -> str:
    """The CPU's vector-instruction flags (SSE, AVX, AVX-512, AMX, NEON, SVE) from ``_cpuinfo()``, sorted."""
    flags = (info.get("flags") or info.get("Features") or "").split()
    return " ".join(sorted(f for f in set(flags) if f.startswith(SIMD_PREFIXES)))


def _where(path: str | Path | None) -> Path:
    """The folder git runs in: ``path``, or this package's folder (so the checkout medsg is imported from)."""
    return Path(path) if path else Path(__file__).resolve().parent


def _git(args: list[str], where: Path) -> subprocess.CompletedProcess | None:
    """``git args`` in ``where``; None when git is missing or fails to start."""
    try:
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _git_output(args: list[str], path: str | Path | None) -> str | None:
    """The stripped output of ``git args`` run in ``_where(path)``; None when git is missing or fails."""
    out = _git(args, _where(path))
    return out.stdout.strip() if out is not None and out.returncode == 0 else None


def git_hash(path: str | Path | None = None) -> str | None:
    """HEAD of the git repository holding ``path`` (default: this package), or None outside git."""
    return _git_output(["rev-parse", "HEAD"], path) or None


def git_toplevel(path: str | Path | None = None) -> Path | None:
    """The root of the checkout holding ``path`` (default: this package), or None outside git."""
    top = _git_output(["rev-parse", "--show-toplevel"], path)
    return Path(top) if top else None


# What can change a fold's numbers: the package's code (but not its report writers or benchmarks), the split
# files and the dependency pins. README, tests, experiments (reproduce reads the report's own config.yaml) and
# reports cannot, so a difference there does not count as "other code".
NUMERIC_PATHS = (":(top)medsg", ":(top)data_splits", ":(top)pyproject.toml")
NOT_NUMERIC = (":(exclude,top)medsg/report", ":(exclude,top)medsg/bench")


def git_same_code(commit: str | None, path: str | Path | None = None) -> bool | None:
    """Whether the checkout has ``commit``'s numerics: no diff in ``NUMERIC_PATHS`` between that commit and
    the working tree, and nothing untracked there (None when either cannot be told: no git, unknown commit)."""
    if not commit:
        return None
    where = _where(path)
    diff = _git(["diff", "--quiet", commit, "--", *NUMERIC_PATHS, *NOT_NUMERIC], where)
    status = _git(["status", "--porcelain", "--", *NUMERIC_PATHS, *NOT_NUMERIC], where)
    if diff is None or diff.returncode not in (0, 1) or status is None or status.returncode != 0:
        return None
    return diff.returncode == 0 and not status.stdout.strip()


def git_clean(path: str | Path | None = None) -> bool | None:
    """Whether the checkout holding ``path`` (default: this package) has no change outside reports/ (None
    outside git): a report made from a dirty tree cannot be traced to a commit."""
    status = _git_output(["status", "--porcelain", "--", ":/", ":(exclude,top)reports"], path)
    return None if status is None else not status
