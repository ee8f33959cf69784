"""The fold lock: it appears whole (owner included), so a kill at any instant leaves a lock the next run can judge."""

from __future__ import annotations

import os
import socket

import pytest

from medsg.core.errors import RunLocked
from medsg.train.lock import FileLock


def test_the_lock_appears_with_its_owner(tmp_path):
    lock = tmp_path / "fold_0" / ".lock"
    with FileLock(lock):
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(RunLocked, match=rf"in use by pid {os.getpid()} on "):
            FileLock(lock).acquire()
    assert not lock.exists() and os.listdir(tmp_path / "fold_0") == []


def test_a_kill_as_the_lock_is_created_leaves_no_ownerless_lock(tmp_path, monkeypatch):
    """The lock was created empty, then written: a kill between left a lock naming nobody, refused forever."""
    lock = tmp_path / ".lock"
    real_link = os.link

    def killed(src, dst, *args, **kwargs):  # the instant the lock appears, the process dies
        real_link(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", killed)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        FileLock(lock).acquire()
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    monkeypatch.setattr(os, "link", real_link)
    assert lock.read_text().split() == [str(os.getpid()), socket.gethostname()]  # judged by its owner
