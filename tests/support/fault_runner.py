"""The demo's `train_digits.py`, shrunk, that can kill itself at a chosen moment (for test_faults.py).

    python3 tests/support/fault_runner.py FOLDER START [FAULT] [seed=N]
    python3 tests/support/fault_runner.py --serve

FOLDER receives results/ (args.checkpoint) and models/ (args.savepoint); START is the task to start
from, as for train_digits.py. FAULT picks the moment of a SIGKILL:
    train:T:N     in the N-th mini-batch of session T, mid-training
    before:NAME   once NAME's temporary file is written and synced, before it is moved into place
    after:NAME    right after NAME is moved into place (before its folder is synced)
Without FAULT it runs like `python3 train_digits.py START` with these args; seed=N changes args.seed.

With --serve it reads runs as JSON lines, [FOLDER, START, [FAULT, ...], OUTPUT], and runs each in a
process forked from itself, so a run starts with torch and the code already imported (a fresh
interpreter spends seconds on that). The run's stdout and stderr go to the file OUTPUT; the answer is
one line with its exit status (-9 for SIGKILL, as subprocess reports it).
"""
import json
import os
import signal
import sys
import traceback

# Run as a script, its own folder (tests/support/) is on sys.path, not the root the code is in.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import train_digits  # noqa: E402
from utils.run.session import main  # noqa: E402

# 3 tasks of 2 digits, 4 epochs: a quarter of a second a session on one CPU thread
SHRUNK = dict(num_class=6, num_task=3, epochs=4, schedule=[2], memory=30, device="cpu")


def shrunk_args(folder, **over):
    return type("args", (train_digits.args,), dict(SHRUNK, checkpoint=os.path.join(folder, "results"),
                                                   savepoint=os.path.join(folder, "models"), **over))


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_training(session, batch):
    import learner_task_itaml
    real, seen = learner_task_itaml.MetaLearner.meta_step, [0]

    def meta_step(self, x, y):
        if self.session == session:
            seen[0] += 1
            if seen[0] == batch:
                die()
        return real(self, x, y)
    learner_task_itaml.MetaLearner.meta_step = meta_step


def kill_around_replace(name, after):
    real = os.replace

    def replace(src, dst):
        if os.path.basename(dst) == name and not after:
            die()
        real(src, dst)
        if os.path.basename(dst) == name:
            die()
    os.replace = replace  # utils.files.atomic_write calls os.replace


def arm(fault):
    kind, _, where = fault.partition(":")
    if kind == "train":
        session, batch = map(int, where.split(":"))
        kill_in_training(session, batch)
    elif kind in ("before", "after"):
        kill_around_replace(where, kind == "after")
    else:
        raise SystemExit(f"unknown fault {fault!r}")


def run(folder, start, options):
    over = {"seed": int(o[len("seed="):]) for o in options if o.startswith("seed=")}
    for fault in (o for o in options if not o.startswith("seed=")):
        arm(fault)
    main(shrunk_args(folder, **over), ["train_digits.py", str(start)])


def serve():
    # What every run imports on first use (the report's plot, the digits, and torch._dynamo, which
    # an optimizer's first construction imports): once here, not per run.
    import matplotlib.figure  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import torch._dynamo  # noqa: F401
    for line in sys.stdin:
        folder, start, options, output = json.loads(line)
        pid = os.fork()
        if pid == 0:
            forked(folder, start, options, output)
        _, status = os.waitpid(pid, 0)
        print(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status),
              flush=True)


def forked(folder, start, options, output):
    """One run in a forked child; never returns."""
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the server's requests are not the run's input
    code = 0
    try:
        run(folder, start, options)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run(sys.argv[1], sys.argv[2], sys.argv[3:])
