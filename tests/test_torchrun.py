"""`torchrun --nproc_per_node=2 train_digits.py 0` on the CPU (gloo): two ranks, bounded by a timeout."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.support.fault_runner import shrunk_args
from utils.run.session import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "support", "torchrun_digits.py")
DEADLINE_S = 300  # both ranks share two busy cores; a hung collective call fails here, not forever


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(folder, start):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               SCRIPT, str(folder), str(start)]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=DEADLINE_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-rank run did not finish in {DEADLINE_S} s (a collective call hung?): "
                    f"{e.stderr}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def lines(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchrun")
    return folder, torchrun(folder, 0)


def test_every_rank_ends_every_session_with_identical_weights(two_ranks):
    folder, _ = two_ranks
    sessions = [[json.loads(line) for line in lines(folder / "ranks" / f"rank{r}.sessions")]
                for r in (0, 1)]
    assert [s["session"] for s in sessions[0]] == [0, 1, 2]
    assert [s["session"] for s in sessions[1]] == [0, 1, 2]
    for mine, theirs in zip(*sessions):
        assert mine["checksum"] == theirs["checksum"]
        assert mine["acc_task_agnostic"] == theirs["acc_task_agnostic"]  # gathered: the whole test set
    # the weights moved between sessions (identical but untrained would pass the line above)
    assert len({s["checksum"] for s in sessions[0]}) == 3
    # a rank's shard lacked a task of the global batch, and the run went on regardless
    assert sum(s["absent"] for ranks in sessions for s in ranks) > 0


def test_only_rank_0_writes_and_each_session_file_once(two_ranks):
    folder, done = two_ranks
    assert not os.path.exists(folder / "ranks" / "rank1.writes")
    writes = [os.path.basename(p) for p in lines(folder / "ranks" / "rank0.writes")]
    for t in range(3):
        for name in (f"session_{t}.json", f"session_{t}_model.pt", f"session_{t}_memory.json"):
            assert writes.count(name) == 1, name
    assert done.stdout.count("session 2: 6 classes seen") == 1  # one table, from rank 0
    record = json.load(open(folder / "results" / "session_2.json"))
    assert record["world_size"] == 2
    assert "× 2 ranks (torchrun)" in open(folder / "results" / "log.txt").read()


def test_the_test_set_is_counted_once_as_in_one_process(two_ranks, tmp_path):
    folder, _ = two_ranks
    single = run(shrunk_args(str(tmp_path), train_batch=16), 0, "train_digits.py")
    two = json.load(open(folder / "results" / "session_2.json"))
    assert two["num_test_samples"] == single[-1]["num_test_samples"]
    assert [len(v) for v in two["per_task"].values()] == [3, 3, 3, 3]


def test_resuming_under_torchrun_continues_the_run(two_ranks, tmp_path):
    folder, _ = two_ranks
    copy = tmp_path / "resume"
    for sub in ("results", "models"):
        os.makedirs(copy / sub)
        for name in os.listdir(folder / sub):
            if name.startswith(("session_0", "class", "manifest")):
                with open(folder / sub / name, "rb") as src, open(copy / sub / name, "wb") as dst:
                    dst.write(src.read())
    done = torchrun(copy, 1)
    assert "resuming from finished session 0" in done.stdout + done.stderr
    ranks = [[json.loads(line) for line in lines(copy / "ranks" / f"rank{r}.sessions")] for r in (0, 1)]
    assert [s["session"] for s in ranks[0]] == [1, 2]
    assert ranks[0][-1]["checksum"] == ranks[1][-1]["checksum"]
    uninterrupted = [json.loads(line) for line in lines(folder / "ranks" / "rank0.sessions")]
    assert ranks[0][-1]["checksum"] == uninterrupted[-1]["checksum"]  # as if never stopped
    assert os.path.exists(copy / "results" / "session_2.json")
