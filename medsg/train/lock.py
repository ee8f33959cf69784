"""Lock files so two processes never train the same fold of a run folder at once.

One lock per fold (``fold_K/.lock``), created whole with its ``pid host`` (a hard link of a written temp file,
so a kill can never leave an empty lock that names nobody). Folds of one run can
still train in parallel as separate jobs (``--fold K``), but a second ``medsg run`` on the same folder is refused.
A lock whose pid is dead on this host is stale and taken over with a warning.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from medsg.core.errors import RunLocked
from medsg.core.io import process_alive

log = logging.getLogger(__name__)


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        pid_text, _, host = path.read_text().strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None, ""


def _create_with(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` in one step, or raise ``FileExistsError``: the text goes into a temp
    file that is then hard-linked to ``path`` (O_EXCL where the filesystem has no hard links)."""
    temp = path.with_name(f"{path.name}.{os.getpid()}.{socket.gethostname()}.new")
    temp.write_text(text)
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: create, then write (a kill between leaves an empty lock)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    finally:
        temp.unlink(missing_ok=True)


class FileLock:
    """``with FileLock(path):`` holds ``path`` for this process or raises ``RunLocked``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.held = False

    def acquire(self) -> FileLock:
        """Create the lock file (taking over a stale one of a dead local pid) or raise ``RunLocked``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                _create_with(self.path, me)
            except FileExistsError:
                pid, host = _read_owner(self.path)
                if pid is not None and host == socket.gethostname() and not process_alive(pid):
                    log.warning("taking over stale lock %s (pid %d is gone)", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLocked(
                    f"{self.path.parent} is in use by pid {pid} on {host or 'an unknown host'} "
                    f"(lock file {self.path}). Wait for it to finish, use another experiment.output_dir, "
                    "or delete the lock file if that process is really gone."
                ) from None
            self.held = True
            return self
        raise RunLocked(
            f"could not take lock {self.path}: it named a dead process again after the stale one was removed "
            "(two jobs taking it over at once?). Re-run the command, or delete the lock file if no medsg run "
            "uses this folder."
        )

    def release(self) -> None:
        """Remove the lock file if this object holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
