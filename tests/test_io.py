"""Atomic writes leave either the old file or the complete new one, with ordinary permissions."""

import os
import stat

import pytest
import torch

from medsg.core.io import atomic_torch_save, atomic_write_bytes, atomic_write_text


def test_write_replace_and_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")

    def broken_replace(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_torch_save_round_trip(tmp_path):
    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


class _FullDisk:
    """A file handle whose writes fail as on a full disk (what ``os.fdopen`` returns, patched)."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


@pytest.mark.parametrize("what", ["checkpoint", "report"])
def test_full_disk_is_one_clear_error_and_the_previous_file_survives(tmp_path, monkeypatch, what):
    from medsg.cli import find_user_error, one_line
    from medsg.core.io import DiskFullError

    target = tmp_path / ("checkpoint_last.pt" if what == "checkpoint" else "report.md")
    if what == "checkpoint":
        atomic_torch_save({"epoch": 1}, target)
    else:
        atomic_write_text(target, "# report v1\n")
    before = target.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError) as info:
        if what == "checkpoint":
            atomic_torch_save({"epoch": 2}, target)
        else:
            atomic_write_text(target, "# report v2\n")
    message = one_line(find_user_error(info.value))  # what the CLI prints: one line
    assert str(target) in message and "disk is full" in message and "previous" in message
    assert isinstance(info.value, OSError)  # callers catching OSError still do
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left behind


def test_full_disk_before_the_first_version(tmp_path, monkeypatch):
    import errno

    from medsg.core.io import DiskFullError

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tempfile.mkstemp", no_space)
    with pytest.raises(DiskFullError, match="was not written"):
        atomic_write_text(tmp_path / "summary.json", "{}")


def test_read_only_folder_is_one_clear_error(tmp_path, monkeypatch):
    from medsg.cli import find_user_error, one_line
    from medsg.core.io import NotWritableError

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes through a 0o500 folder: give the error the kernel gives a user
        import errno

        def refused(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr("tempfile.mkstemp", refused)
    try:
        with pytest.raises(NotWritableError) as info:
            atomic_write_text(folder / "summary.json", "{}")
    finally:
        folder.chmod(0o700)
    message = one_line(find_user_error(info.value))
    assert (
        str(folder / "summary.json") in message and "was not written" in message and "output_dir" in message
    )


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    from medsg.core.io import HOST, remove_stale_temps

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    target = tmp_path / "checkpoint_last.pt"
    stale = tmp_path / f".checkpoint_last.pt.{HOST}.{int(dead.stdout)}.abc123.tmp"  # a kill -9 mid-write
    alive = tmp_path / f".checkpoint_last.pt.{HOST}.{os.getppid()}.def456.tmp"  # a live writer's
    elsewhere = tmp_path / f".checkpoint_last.pt.another-host.{int(dead.stdout)}.x.tmp"  # a shared folder
    other = tmp_path / f".checkpoint_best.pt.{HOST}.{int(dead.stdout)}.x.tmp"  # another file's
    for path in (stale, alive, elsewhere, other):
        path.write_bytes(b"partial")
    atomic_torch_save({"epoch": 3}, target)
    assert not stale.exists() and alive.exists() and elsewhere.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "checkpoint_best.pt") == [other]


def test_a_folder_hidden_by_a_kill_mid_publish_comes_back(tmp_path, monkeypatch):
    from medsg.core.io import publish_dir, staging_dir

    final = tmp_path / "model"
    staging = staging_dir(final)
    (staging / "package.json").write_text("v1")
    publish_dir(staging, final)
    staging = staging_dir(final)
    (staging / "package.json").write_text("v2")
    real_rename = os.rename

    def killed_after_first(src, dst):  # Path.rename: the first rename (model -> .model.old) lands, then -9
        real_rename(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        publish_dir(staging, final)
    monkeypatch.undo()
    assert not final.exists()
    staging_dir(final)  # the next export (or any staging of this folder) first puts the old one back
    assert (final / "package.json").read_text() == "v1"


def test_the_working_directory_is_never_published_over(tmp_path, monkeypatch):
    """`medsg export RUN .` would rename the working directory away and delete it; refused, and relative
    names of other folders work (Path('.') has no name to put a sibling beside)."""
    from medsg.core.errors import MedsgError
    from medsg.core.io import publish_dir, staging_dir

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(MedsgError, match=r"is the working directory.*\./model"):
        staging_dir(".")
    assert os.getcwd() == str(here)
    staging = staging_dir("model")
    (staging / "package.json").write_text("{}")
    assert publish_dir(staging, "model") == here / "model" and (here / "model" / "package.json").is_file()
