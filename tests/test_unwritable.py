"""Folders that cannot be written: one sentence naming the field, the path and what to do, exit
status 2, no traceback; before any training where the folders can be checked up front, and naming the
file when a write fails mid-run. Tests run as root, which writes to read-only folders anyway, so the
unwritable places are /proc and paths below a regular file."""
import errno
import os
import subprocess
import sys

import pytest

import utils.run.session as S
from utils.files import TEMPORARY
from utils.run.store import RunStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")


def no_training(*a, **k):
    raise AssertionError("a session started although a folder cannot be written")


def stopped(small_args, capsys, *overrides):
    """Exit status and stderr of ``train_digits.py 0 <overrides>``."""
    with pytest.raises(SystemExit) as exit_:
        S.main(small_args, ["train_digits.py", "0", "epochs=1", *overrides])
    return exit_.value.code, capsys.readouterr().err


@proc
@pytest.mark.parametrize("field,folder,missing", [("checkpoint", "/proc/itaml", "/proc/itaml"),
                                                  ("savepoint", "/proc/itaml/models", "/proc/itaml")])
def test_a_folder_under_proc_is_one_sentence_before_training(small_args, capsys, monkeypatch, field,
                                                             folder, missing):
    monkeypatch.setattr(S, "run_session", no_training)
    code, err = stopped(small_args, capsys, f"{field}={folder}")
    assert code == 2
    assert err == (f"error: args.{field} = '{folder}' cannot be written (No such file or "
                   f"directory: {missing}); choose a folder you can write to.\n")


@pytest.mark.parametrize("field", ["checkpoint", "savepoint"])
def test_a_regular_file_where_a_folder_should_be(small_args, capsys, monkeypatch, tmp_path, field):
    monkeypatch.setattr(S, "run_session", no_training)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder\n")
    for folder in (blocker / "results", blocker):  # below the file, and the file itself
        code, err = stopped(small_args, capsys, f"{field}={folder}", f"savepoint={tmp_path / 'm'}"
                            if field == "checkpoint" else f"checkpoint={tmp_path / 'r'}")
        assert code == 2
        assert err == (f"error: args.{field} = '{folder}' cannot be written ({blocker} is a file, "
                       "not a folder); choose a folder you can write to.\n")
    assert blocker.read_text() == "not a folder\n"


@proc
def test_the_command_line_prints_no_traceback(tmp_path):
    """As a user runs it: ``python3 train_digits.py 0 checkpoint=/proc/itaml epochs=1``."""
    done = subprocess.run([sys.executable, "train_digits.py", "0", "checkpoint=/proc/itaml",
                           "epochs=1", "device=cpu"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: args.checkpoint = '/proc/itaml' cannot be written (No such file or directory: "
        "/proc/itaml); choose a folder you can write to."]


def test_the_check_leaves_no_file_behind(tmp_path):
    from types import SimpleNamespace
    cfg = SimpleNamespace(checkpoint=str(tmp_path / "results"), savepoint=str(tmp_path / "models"),
                          num_task=2)
    with RunStore(cfg).lock():
        assert os.listdir(cfg.savepoint) == [] and os.listdir(cfg.checkpoint) == [".lock"]


def test_a_disk_full_mid_run_names_the_file_and_keeps_finished_sessions(small_args, capsys,
                                                                         monkeypatch):
    """Session 0 finishes; moving session 1's model into place fails as on a full disk."""
    small_args.num_class, small_args.num_task, small_args.epochs = 4, 2, 1
    real_replace = os.replace
    finished = {}

    def full(src, dst):
        if os.path.basename(dst) == "session_1_model.pt":
            finished.update({p: open(p, "rb").read() for p in session_files(small_args, 0)})
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(SystemExit) as exit_:
        S.main(small_args, ["train_digits.py", "0"])
    err = capsys.readouterr().err
    model = os.path.join(small_args.savepoint, "session_1_model.pt")
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"error: {model} could not be written (No space left on "
                                    "device); make room on its disk or fix its folder, then run "
                                    "the command again: finished sessions are kept.")
    assert finished and {p: open(p, "rb").read() for p in finished} == finished
    assert not os.path.exists(os.path.join(small_args.checkpoint, "session_1.json"))
    for folder in (small_args.checkpoint, small_args.savepoint):
        assert not [n for n in os.listdir(folder) if TEMPORARY.match(n)]


def session_files(args, t):
    return [os.path.join(args.checkpoint, f"session_{t}.json"),
            os.path.join(args.savepoint, f"session_{t}_model.pt"),
            os.path.join(args.savepoint, f"session_{t}_memory.json")]
