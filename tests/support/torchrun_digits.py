"""The demo's `train_digits.py`, shrunk, as one rank of a torchrun job (for test_torchrun.py).

    python3 -m torch.distributed.run --nproc_per_node=2 \
        tests/support/torchrun_digits.py FOLDER START

FOLDER receives results/ and models/ as for tests/support/fault_runner.py, plus ranks/: for every
rank, one line a finished session with the SHA-256 of its parameters and buffers (rank<r>.sessions),
every file path the rank wrote (rank<r>.writes), and how many mini-batches of each session held a
task in the global batch but not in this rank's shard (rank<r>.absent).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import learner_task_itaml  # noqa: E402
from tests.support.fault_runner import shrunk_args  # noqa: E402
from utils import files  # noqa: E402
from utils.fast import distributed  # noqa: E402
from utils.run import session  # noqa: E402


def append(folder, name, line):
    with open(os.path.join(folder, name), "a") as f:
        f.write(line + "\n")


def instrument(out):
    rank = int(os.environ["RANK"])
    run_session, atomic_write, task_shares = (session.run_session, files.atomic_write,
                                              learner_task_itaml.task_shares)
    absent = {}

    def counted_session(job, t):
        record = run_session(job, t)
        append(out, f"rank{rank}.sessions", json.dumps(
            {"session": t, "checksum": distributed.checksum(job.model),
             "acc_task_agnostic": record["acc_task_agnostic"], "absent": absent.get(t, 0)}))
        return record

    def logged_write(path, write):
        append(out, f"rank{rank}.writes", os.path.abspath(path))
        return atomic_write(path, write)

    def shares_with_absence(task_ids, num_task, ctx, *rest, **kw):
        shares = task_shares(task_ids, num_task, ctx, *rest, **kw)
        local = set(task_ids.reshape(-1).tolist())
        if set(shares.tasks) - local:
            t = int(shares.tasks[-1])  # the newest task in a batch is the session's own
            absent[t] = absent.get(t, 0) + 1
        return shares

    session.run_session = counted_session
    files.atomic_write = logged_write
    learner_task_itaml.task_shares = shares_with_absence


if __name__ == "__main__":
    folder, start = sys.argv[1], sys.argv[2]
    out = os.path.join(folder, "ranks")
    os.makedirs(out, exist_ok=True)
    instrument(out)
    session.main(shrunk_args(folder, train_batch=16), ["train_digits.py", start])
