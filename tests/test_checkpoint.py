"""Atomic writes: the file appears whole or not at all, with the permissions of any other file."""
import os
import stat

import pytest

from utils.checkpoint import atomic_write, write_text


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "b.txt")
    write_text(path, "old")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["b.txt"]
