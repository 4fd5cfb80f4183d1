"""Killed runs: SIGKILL mid-training and mid-write, and Ctrl-C, then resume; and same seed, same run.

Every run is a process of its own: forked by tests/support/fault_runner.py's server, which kills it
at a moment it picks, or a copy of train_digits.py run as a user runs it, signalled from outside.
After each fault the test resumes where the files say, then checks that the finished sessions' files
are byte for byte what they were before the resume, that no half-written file is left, and that
every session's record (all but times and paths), model and memory equal an uninterrupted run's.
"""
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.support.fault_runner import SHRUNK, shrunk_args
from utils.files import TEMPORARY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "tests", "support", "fault_runner.py")
# One thread: runs of this suite and other jobs share the cores without OpenMP threads spinning
# against each other, and every run does its sums in the same order.
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
VOLATILE = {"seconds", "train_seconds", "eval_seconds", "args"}  # times, and paths in the args
# The same shrinking as fault_runner.SHRUNK, made by editing the script as a user would.
EDITS = [("num_class = 10 ", "num_class = 6 "), ("num_task = 5 ", "num_task = 3 "),
         ("epochs = 10 ", "epochs = 4 "), ("schedule = [4, 8] ", "schedule = [2] "),
         ("memory = 400 ", "memory = 30 "), ('device = "auto" ', 'device = "cpu" ')]


class Folders:
    """A run's args.checkpoint and args.savepoint."""

    def __init__(self, checkpoint, savepoint):
        self.checkpoint, self.savepoint = str(checkpoint), str(savepoint)

    def finished(self):
        return [t for t in range(SHRUNK["num_task"])
                if os.path.exists(os.path.join(self.checkpoint, f"session_{t}.json"))]

    def session_files(self, t):
        return [os.path.join(self.checkpoint, f"session_{t}.json"),
                os.path.join(self.savepoint, f"session_{t}_model.pt"),
                os.path.join(self.savepoint, f"session_{t}_memory.json")]

    def finished_files(self):
        """Bytes of every file a finished session owns, and of the class order they depend on."""
        paths = [p for t in self.finished() for p in self.session_files(t)]
        paths += [os.path.join(self.checkpoint, n) for n in ("class_order.json", "classes.txt")]
        return {p: open(p, "rb").read() for p in paths}

    def temporaries(self):
        return [n for folder in (self.checkpoint, self.savepoint) if os.path.isdir(folder)
                for n in os.listdir(folder) if TEMPORARY.match(n)]

    def outcome(self):
        """Per session: the record without times and paths, and the checksums of model and memory."""
        result = []
        for t in range(SHRUNK["num_task"]):
            record_path, model, memory = self.session_files(t)
            record = json.load(open(record_path))
            result.append(({k: v for k, v in record.items() if k not in VOLATILE},
                           hashlib.sha256(open(model, "rb").read()).hexdigest(),
                           hashlib.sha256(open(memory, "rb").read()).hexdigest()))
        return result

    def manifest(self):
        return json.load(open(os.path.join(self.checkpoint, "manifest.json")))


@pytest.fixture(scope="module")
def server():
    """fault_runner.py --serve: one interpreter imports torch and the code once, then forks a fresh
    process for every run, so a run costs its own time rather than seconds of imports."""
    process = subprocess.Popen([sys.executable, RUNNER, "--serve"], cwd=ROOT, env=ENV,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield process
    process.stdin.close()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def runner(server, tmp_path_factory):
    """runner(folder, start, *options): a run as `python3 tests/support/fault_runner.py folder start
    options…` would make it, as a CompletedProcess (stdout holds stdout and stderr)."""
    def run(folder, start, *options):
        output = str(tmp_path_factory.mktemp("output") / "output.txt")
        server.stdin.write(json.dumps([str(folder), start, options, output]) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], 300)
        if not ready:
            server.kill()
            pytest.fail("a run took more than 300 s")
        code = int(server.stdout.readline())
        text = open(output).read()
        return subprocess.CompletedProcess([folder, start, *options], code, text, text)
    return run


def runner_folders(folder):
    args = shrunk_args(str(folder))
    return Folders(args.checkpoint, args.savepoint)


@pytest.fixture(scope="module")
def reference(runner, tmp_path_factory):
    """An uninterrupted run of the shrunk demo."""
    folder = tmp_path_factory.mktemp("reference")
    done = runner(folder, 0)
    assert done.returncode == 0, done.stderr
    return runner_folders(folder).outcome()


def resume_and_compare(folders, start, reference, resume):
    """Resume at ``start`` with ``resume(start)``; check it against the files and the reference."""
    assert folders.finished() == list(range(start))
    before = folders.finished_files()
    done = resume(start)
    assert done.returncode == 0, done.stderr
    where = f"resuming from finished session {start - 1}" if start else "starting afresh"
    assert where in done.stdout
    after = folders.finished_files()
    assert all(after[p] == data for p, data in before.items())  # finished sessions untouched
    assert folders.temporaries() == []
    assert folders.outcome() == reference
    return done


# fault, the task to resume at, and why this moment matters
FAULTS = [
    ("train:0:2", 0, "no session finished: the restart overwrites session 0's partial files"),
    ("before:manifest.json", 0, "killed before training: a restart at task 0 clears the temporary"),
    ("train:1:3", 1, "mid-training: session 0 stays as it was"),
    ("after:session_1_model.pt", 1, "session 1's model is in place, its memory is not"),
    ("before:session_1_model.pt", 1, "a synced temporary model is left; it must not confuse"),
    ("before:session_1.json", 1, "model, memory, summary and report of session 1 are in place, "
                                 "its record is not: session 1 is unfinished and redone"),
    ("after:session_1.json", 2, "session 1 counts as finished once its record is in place"),
]


@pytest.mark.parametrize("fault,start,why", FAULTS, ids=[f[0] for f in FAULTS])
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, runner, reference, fault,
                                                          start, why):
    folders = runner_folders(tmp_path)
    killed = runner(tmp_path, 0, fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if fault.startswith("before:"):
        left = [n for n in folders.temporaries() if n.startswith("." + fault.split(":")[1] + ".")]
        assert len(left) == 1, folders.temporaries()
    done = resume_and_compare(folders, start, reference, lambda s: runner(tmp_path, s))
    if fault.startswith("before:"):
        assert "removed 1 half-written file(s) an interrupted run left" in done.stdout
    manifest = folders.manifest()
    assert manifest["command"] == "python3 train_digits.py 0"
    assert [r["task"] for r in manifest["resumes"]] == ([start] if start else [])


def test_a_resumed_run_killed_again_resumes_again(tmp_path, runner, reference):
    """Two faults in one run: mid-training of session 1, then, in the resumed run, with session 2's
    memory written to its temporary file but not yet in place."""
    folders = runner_folders(tmp_path)
    assert runner(tmp_path, 0, "train:1:2").returncode == -signal.SIGKILL
    assert runner(tmp_path, 1, "before:session_2_memory.json").returncode == -signal.SIGKILL
    resume_and_compare(folders, 2, reference, lambda s: runner(tmp_path, s))
    assert [r["task"] for r in folders.manifest()["resumes"]] == [1, 2]


def script_copy(tmp_path):
    """train_digits.py shrunk by editing its args, in a folder of its own, as a user would run it."""
    src = open(os.path.join(ROOT, "train_digits.py")).read()
    for old, new in EDITS:
        assert old in src, old
        src = src.replace(old, new)
    (tmp_path / "train_digits.py").write_text(src)
    return Folders(tmp_path / "results" / "digits" / "demo", tmp_path / "models" / "digits" / "demo")


def start_script(tmp_path, start):
    # A child of a shell that ignores SIGINT would ignore it too; Ctrl-C must reach this one.
    return subprocess.Popen([sys.executable, "train_digits.py", str(start)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def signal_after_first_session(tmp_path, folders, signum):
    """Start the script at task 0; the moment session 0's record appears, send ``signum``."""
    child = start_script(tmp_path, 0)
    first = os.path.join(folders.checkpoint, "session_0.json")
    deadline = time.monotonic() + 240
    while not os.path.exists(first) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signum)
    out, err = child.communicate(timeout=240)
    return child.returncode, out, err


def run_script(tmp_path, start):
    child = start_script(tmp_path, start)
    out, err = child.communicate(timeout=240)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_sigkill_from_outside_then_resume(tmp_path, reference):
    """The kill comes from another process at a moment the run does not choose."""
    folders = script_copy(tmp_path)
    code, _, err = signal_after_first_session(tmp_path, folders, signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    start = len(folders.finished())
    assert 1 <= start < SHRUNK["num_task"]  # killed after session 0, before the run ended
    resume_and_compare(folders, start, reference, lambda s: run_script(tmp_path, s))


def test_ctrl_c_says_where_to_resume_and_the_resume_matches(tmp_path, reference):
    folders = script_copy(tmp_path)
    code, out, err = signal_after_first_session(tmp_path, folders, signal.SIGINT)
    assert code == 130, err
    start = len(folders.finished())
    assert 1 <= start < SHRUNK["num_task"]
    assert (f"interrupted in session {start}; sessions before it are saved: resume with "
            f"`python3 train_digits.py {start}`.") in out
    assert "Traceback" not in err
    resume_and_compare(folders, start, reference, lambda s: run_script(tmp_path, s))


def test_same_seed_same_run(tmp_path, runner, reference):
    """Two fresh runs with one seed on the CPU: equal records, byte-identical models and memories."""
    assert runner(tmp_path, 0).returncode == 0
    assert runner_folders(tmp_path).outcome() == reference


def test_another_seed_another_run(tmp_path, runner, reference):
    """The seed is used: seed 1 gives other weights (so the test above is not trivially true)."""
    assert runner(tmp_path, 0, "seed=1").returncode == 0
    mine = runner_folders(tmp_path).outcome()
    assert all(a[1] != b[1] for a, b in zip(mine, reference))
