"""Atomic writes: a result file is either the old version or the complete new one, never half of each.

Everything medsg writes goes through here, so a run killed with -9 loses at most the file being written, and a
full disk (or a quota) stops a run with one clear error while the previous version of the file survives.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from medsg.core.errors import MedsgError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(MedsgError, OSError):
    """No space (or quota) left while writing a file; the previous version of the file is kept."""


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
    kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
    return DiskFullError(
        exc.errno,
        f"cannot write {path}: {what} ({os.strerror(exc.errno or errno.ENOSPC)}); {kept}. Free space in "
        f"{path.parent} (or point experiment.output_dir elsewhere), then re-run the same command to resume.",
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file in the same folder, fsync it, then rename it over ``path``.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise _disk_full(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise _disk_full(path, exc) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` an object (checkpoints must never be half-written)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def staging_dir(final_dir: str | os.PathLike) -> Path:
    """An empty folder beside ``final_dir`` to build a whole folder in; a partial one left by a killed run is
    cleared. Publish it with ``publish_dir``."""
    final_dir = Path(final_dir)
    staging = final_dir.with_name(f".{final_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Replace ``final_dir`` by ``staging`` with renames, so a reader sees the old folder or the new one, whole."""
    staging, final_dir = Path(staging), Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final_dir.exists():
        final_dir.rename(old)
    staging.rename(final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


_REQUIRED = object()


def read_json(path: str | os.PathLike, default: Any = _REQUIRED, advice: str = "re-create it") -> Any:
    """The JSON value in ``path``: the one reader of medsg's own files (metrics, calibration, summaries).

    An absent file gives ``default`` when one is given (else a ``MedsgError`` naming it); an unreadable one is
    always an error that names the file and says what to do (``advice``), never a bare ``JSONDecodeError``.
    """
    path = Path(path)
    if not path.is_file():
        if default is not _REQUIRED:
            return default
        raise MedsgError(f"{path} is missing; {advice}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedsgError(f"{path} is not readable JSON ({exc}); {advice}") from exc
