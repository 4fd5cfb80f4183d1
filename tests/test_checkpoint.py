"""Atomic writes: the file appears whole or not at all, with the permissions of any other file."""
import os
import stat

import pytest

from utils.errors import ConfigError
from utils.files import atomic_write, write_text


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
    with pytest.raises(ConfigError, match=r"^.*b\.txt could not be written \(disk full\); make room "
                                          r"on its disk or fix its folder, then run the command "
                                          r"again: finished sessions are kept\.$"):
        atomic_write(path, fail)
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["b.txt"]


def store_for(tmp_path):
    from types import SimpleNamespace

    from utils.run.store import RunStore
    cfg = SimpleNamespace(checkpoint=str(tmp_path / "results"), savepoint=str(tmp_path / "models"),
                          num_task=3)
    return RunStore(cfg, "train_digits.py")


def test_data_then_name_then_folder_reach_the_disk(tmp_path, monkeypatch):
    """fsync the temporary file, rename it, fsync the folder; a new folder is synced into its parent:
    after a power cut the file is the old one or the whole new one, and its name is not lost."""
    events, opened = [], {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        opened[fd] = str(path) if os.path.isdir(path) else "temporary"
        return fd

    def spy_fsync(fd):
        events.append(("fsync", opened.get(fd, "?")))
        real_fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    write_text(str(tmp_path / "new" / "a.txt"), "x")
    assert events == [("fsync", str(tmp_path)), ("fsync", "temporary"), ("replace", "a.txt"),
                      ("fsync", str(tmp_path / "new"))]


def test_relative_paths_and_nested_new_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_text(os.path.join("results", "digits", "demo", "a.txt"), "x")
    assert open(tmp_path / "results" / "digits" / "demo" / "a.txt").read() == "x"


def test_only_our_half_written_files_are_removed(tmp_path):
    store = store_for(tmp_path)
    ours = [".session_1_model.pt.k3x9a_2q", ".session_12.json.abcdefgh", ".manifest.json.0123abcd",
            ".summary.csv.zzzzzzzz"]
    theirs = ["notes.txt", ".session_1_model.pt", ".bashrc.abcdefgh", ".session_1_model.pt.short",
              "session_1_model.pt"]
    for folder in (store.cfg.checkpoint, store.cfg.savepoint):
        os.makedirs(folder)
        for name in ours + theirs:
            open(os.path.join(folder, name), "w").close()
    assert store.remove_temporaries() == sorted(ours) * 2
    for folder in (store.cfg.checkpoint, store.cfg.savepoint):
        assert sorted(os.listdir(folder)) == sorted(theirs)
    assert store.remove_temporaries() == []


def test_a_second_run_on_the_same_folders_is_refused(tmp_path):
    from utils.errors import ConfigError
    store = store_for(tmp_path)
    with store.lock():
        with pytest.raises(ConfigError, match=r"another run is using .*results \(it holds "
                                              r".*\.lock\); wait until it ends"):
            with store_for(tmp_path).lock():
                pass
    with store_for(tmp_path).lock():  # released with the first run
        pass


def test_a_model_file_cannot_run_code(tmp_path):
    """A checkpoint that unpickles into a call (here: creating a file) is refused, never run."""
    import torch

    from utils.errors import ConfigError
    store = store_for(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")
    os.makedirs(store.cfg.savepoint)
    torch.save({"weight": Payload()}, store.model_file(1))
    with pytest.raises(ConfigError, match=r"session_1_model.pt is corrupt or not a plain tensor "
                                          r"checkpoint \(UnpicklingError\); move .*session_1.json "
                                          r"away and run `python3 train_digits.py 1`"):
        store.load_model_state(1)
    assert not marker.exists()
    torch.load(store.model_file(1), weights_only=False)  # what a plain torch.load would have done
    assert marker.exists()


def test_a_checksum_names_the_changed_file(tmp_path):
    from utils.errors import ConfigError
    from utils.files import sha256
    store = store_for(tmp_path)
    path = store.memory_file(0)
    write_text(path, "[1, 2]")
    record = {"checksums": {"session_0_memory.json": sha256(path)}}
    store.check_checksum(path, record, 0)
    store.check_checksum(path, {}, 0)  # records older than checksums are taken as they are
    write_text(path, "[1, 3]")
    with pytest.raises(ConfigError, match=r"session_0_memory.json is corrupt: its checksum differs "
                                          r"from the one in .*session_0.json; restore the file, or "
                                          r"move .*session_0.json away"):
        store.check_checksum(path, record, 0)
