"""Recorded runs name the commit they measured (environment `commit`): from
$FUSEINFER_COMMIT, from the COMMIT file a `git archive` snapshot fills in, or from git
itself, marked -dirty when tracked files changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fuseinfer.bench.environment import collect_environment, source_commit

REPO = Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_the_variable_wins(monkeypatch):
    monkeypatch.setenv("FUSEINFER_COMMIT", "abc123")
    assert source_commit() == "abc123"
    assert collect_environment()["commit"] == "abc123"


def test_a_snapshot_names_its_commit_in_the_commit_file(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEINFER_COMMIT", raising=False)
    monkeypatch.setattr("fuseinfer.paths.repo_dir", lambda: tmp_path)
    (tmp_path / "COMMIT").write_text("f00d\n")
    assert source_commit() == "f00d"
    (tmp_path / "COMMIT").write_text("$Format:%H$\n")  # not a snapshot, and no git here
    assert source_commit() is None


def test_a_checkout_asks_git_and_says_when_it_is_dirty(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEINFER_COMMIT", raising=False)
    monkeypatch.setattr("fuseinfer.paths.repo_dir", lambda: tmp_path)
    _git(tmp_path, "init", "-q")
    (tmp_path / "COMMIT").write_text("$Format:%H$\n")
    (tmp_path / "kernel.cu").write_text("// one\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source_commit() == head
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert source_commit() == head
    (tmp_path / "kernel.cu").write_text("// two\n")
    assert source_commit() == head + "-dirty"


def test_git_archive_fills_in_the_commit_file():
    """The repository's .gitattributes marks COMMIT for export-subst (the suite runs from a
    git checkout)."""
    archived = subprocess.run(f"git -C {REPO} archive HEAD COMMIT | tar -xO", shell=True,
                              check=True, capture_output=True, text=True).stdout.strip()
    assert archived == _git(REPO, "rev-parse", "HEAD")
