"""Atomic writes: a result file is either the old version or the complete new one, never half of each.

Everything medsg writes goes through here, so a run killed with -9 loses at most the file being written, and a
full disk (or a quota), a read-only folder or a missing permission stops a run with one clear error while the
previous version of the file survives. Temp files carry this host and pid, so the next write of the same file
removes what a killed process left (a checkpoint's can be hundreds of MB).
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch

from medsg.core.errors import MedsgError

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
HOST = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname()) or "host"  # one name part


class DiskFullError(MedsgError, OSError):
    """No space (or quota) left while writing a file; the previous version of the file is kept."""


class NotWritableError(MedsgError, OSError):
    """The folder is read-only or not ours to write; the previous version of the file is kept."""


def _kept(path: Path) -> str:
    """What a failed write left: the previous file, or none."""
    return f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"


def _disk_full(path: Path, exc: OSError) -> DiskFullError:
    what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
    kept = _kept(path)
    return DiskFullError(
        exc.errno,
        f"cannot write {path}: {what} ({os.strerror(exc.errno or errno.ENOSPC)}); {kept}. Free space in "
        f"{path.parent} (or point experiment.output_dir elsewhere), then re-run the same command to resume.",
    )


def _write_error(path: Path, exc: OSError) -> OSError:
    """The one-line error for a failed write (full disk, no permission), or ``exc`` itself."""
    if exc.errno in NO_SPACE:
        return _disk_full(path, exc)
    if exc.errno in NO_PERMISSION:
        return NotWritableError(
            exc.errno,
            f"cannot write {path}: {os.strerror(exc.errno or errno.EACCES)}; {_kept(path)}. Choose a folder you can "
            "write to (experiment.output_dir, or the command's --out), or fix the folder's permissions.",
        )
    return exc


def temp_prefix(path: Path) -> str:
    """The name prefix of this process's temp files for ``path``: ``.<name>.<host>.<pid>.``."""
    return f".{path.name}.{HOST}.{os.getpid()}."


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files that a killed process on this machine left beside ``path``; a live process's,
    another machine's (a shared folder) and any other file are left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    for temp in path.parent.glob(f".{glob.escape(path.name)}.{HOST}.*.tmp"):
        pid = temp.name[len(path.name) + len(HOST) + 3 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            try:
                temp.unlink(missing_ok=True)
            except OSError:  # another user's file in a sticky folder: not ours to remove, and no obstacle
                continue
            removed.append(temp)
    return removed


def process_alive(pid: int) -> bool:
    """Whether ``pid`` names a live process on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MedsgError):
            raise _write_error(path, exc) from exc
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
    cleared, and a ``final_dir`` that a kill left hidden mid-publish is put back. Publish with ``publish_dir``."""
    final_dir = Path(final_dir).absolute()
    if final_dir.exists() and final_dir.resolve() == Path.cwd().resolve():
        raise MedsgError(
            f"{final_dir} is the working directory, and it would be replaced whole (renamed away, then deleted), "
            "leaving your shell in a deleted folder; name a new folder inside it (e.g. ./model) instead"
        )
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.is_dir() and not final_dir.exists():
        old.rename(final_dir)  # killed between publish_dir's two renames: the previous folder is still whole
    staging = final_dir.with_name(f".{final_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Replace ``final_dir`` by ``staging`` with renames, so a reader sees the old folder or the new one, whole."""
    staging, final_dir = Path(staging), Path(final_dir).absolute()
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    _fsync_tree(staging)  # the files are on disk before a rename publishes them
    if final_dir.exists():
        final_dir.rename(old)
    staging.rename(final_dir)
    _fsync_dir(final_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


def _fsync_dir(folder: Path) -> None:
    """Make a folder's renames durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (copies made with shutil are not)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


_REQUIRED = object()

# pandas.read_csv keywords for medsg's prediction tables: ids stay text, so an image named "NA", "null" or
# "None" keeps its id instead of becoming NaN; only an empty cell is missing.
ID_CSV: dict[str, Any] = {"dtype": {"id": str}, "keep_default_na": False, "na_values": [""]}


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
