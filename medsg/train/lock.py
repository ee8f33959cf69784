"""Lock files so two processes never train the same fold of a run folder at once.

One lock per fold (``fold_K/.lock``), taken with O_CREAT|O_EXCL and holding ``pid host``. Folds of one run can
still train in parallel as separate jobs (``--fold K``), but a second ``medsg run`` on the same folder is refused.
A lock whose pid is dead on this host is stale and taken over with a warning.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from medsg.core.errors import RunLocked

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        pid_text, _, host = path.read_text().strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None, ""


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
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = _read_owner(self.path)
                if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
                    log.warning("taking over stale lock %s (pid %d is gone)", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunLocked(
                    f"{self.path.parent} is in use by pid {pid} on {host or 'an unknown host'} "
                    f"(lock file {self.path}). Wait for it to finish, use another experiment.output_dir, "
                    "or delete the lock file if that process is really gone."
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
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
