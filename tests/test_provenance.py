"""Reports come from committed code: the reports/ guard and the "same code" test used by `medsg reproduce`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from medsg.core.errors import ReportRefused
from medsg.core.provenance import git_clean, git_same_code
from medsg.workflows.experiment import check_reports_write

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "clone"
    (repo / "medsg").mkdir(parents=True)
    (repo / "reports" / "old").mkdir(parents=True)
    (repo / "medsg" / "code.py").write_text("x = 1\n")
    (repo / "reports" / "old" / "report.md").write_text("# old\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return repo


def test_writing_into_reports_needs_a_clean_tree(repo: Path) -> None:
    out = repo / "reports" / "new_run"
    check_reports_write(out, checkout=repo)  # clean: allowed
    (repo / "reports" / "old" / "report.md").write_text("# rewritten\n")  # changes inside reports/ are fine
    check_reports_write(out, checkout=repo)
    (repo / "medsg" / "code.py").write_text("x = 2\n")
    with pytest.raises(ReportRefused, match="uncommitted changes outside reports/"):
        check_reports_write(out, checkout=repo)
    check_reports_write(out, force=True, checkout=repo)  # --force
    check_reports_write(repo.parent / "elsewhere", checkout=repo)  # outside reports/: never refused


def test_same_code_means_no_diff_in_what_can_change_numbers(repo: Path) -> None:
    first = _git(repo, "rev-parse", "HEAD")
    assert git_same_code(first, repo) is True
    (repo / "reports" / "old" / "summary.json").write_text("{}\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a report")
    assert git_same_code(first, repo) is True  # a later commit that only adds reports is the same code
    (repo / "README.md").write_text("words\n")  # prose and tests cannot change numbers
    (repo / "tests").mkdir()
    (repo / "tests" / "test_x.py").write_text("def test(): pass\n")
    assert git_clean(repo) is False and git_same_code(first, repo) is True
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "docs and tests")
    assert git_same_code(first, repo) is True
    (repo / "medsg" / "report").mkdir()
    (repo / "medsg" / "report" / "words.py").write_text("TITLE = 'x'\n")  # report writers: no numbers
    assert git_same_code(first, repo) is True
    (repo / "medsg" / "new.py").write_text("y = 1\n")  # untracked code
    assert git_clean(repo) is False and git_same_code(first, repo) is False
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    assert git_same_code(first, repo) is False
    assert git_same_code(None, repo) is None
    assert git_same_code("0" * 40, repo) is None  # a commit this clone does not have
