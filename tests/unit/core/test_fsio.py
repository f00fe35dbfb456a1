"""File primitives: a move never replaces what is at its target, and moves what it finds
(a symlink as a symlink, a directory as a directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatch.core.fsio import rename_new


def test_rename_new_never_clobbers(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        rename_new(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"
    rename_new(tmp_path / "a", tmp_path / "c")
    assert not (tmp_path / "a").exists() and (tmp_path / "c").read_text() == "a"


def test_rename_new_moves_links_and_directories_as_themselves(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("s")
    os.symlink(target, tmp_path / "link")
    rename_new(tmp_path / "link", tmp_path / "moved")
    assert os.readlink(tmp_path / "moved") == str(target) and target.read_text() == "s"
    (tmp_path / "d").mkdir()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        rename_new(tmp_path / "d", tmp_path / "taken")
    rename_new(tmp_path / "d", tmp_path / "e")
    assert (tmp_path / "e").is_dir() and not (tmp_path / "d").exists()


def test_rename_new_with_directory_fds(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("f")
    (dst / "f").write_text("other")
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            rename_new("f", "f", src_dir_fd=sfd, dst_dir_fd=dfd)
        rename_new("f", "g", src_dir_fd=sfd, dst_dir_fd=dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert (dst / "g").read_text() == "f" and (dst / "f").read_text() == "other"
