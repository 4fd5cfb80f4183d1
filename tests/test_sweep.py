"""``python3 -m utils.run.sweep``: the grid, run names, skipping and resuming, failures, a killed sweep."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from utils.run import sweep
from utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_digits.py")
TINY = ["num_class=4", "num_task=2", "epochs=1", "schedule=[]", "memory=20"]


def test_seeds_and_values():
    assert sweep.parse_seeds("0-3") == [0, 1, 2, 3]
    assert sweep.parse_seeds("5,1,2-3") == [1, 2, 3, 5]
    for bad in ("a", "3-x", ""):
        with pytest.raises(ConfigError, match=r"--seeds .* write e.g. 0-9 or 0,3,7"):
            sweep.parse_seeds(bad)
    assert sweep.split_values("0.1,0.01") == ["0.1", "0.01"]
    assert sweep.split_values("[4,8],[2]") == ["[4,8]", "[2]"]
    assert sweep.split_values("'a,b',c") == ["'a,b'", "c"]


RELEASE_SESSIONS = "{0: {'epochs': 5}, 4: {'lr': 0.05}}"  # train_mnist.py's own


@pytest.mark.parametrize("word,values", [
    (f"sessions={RELEASE_SESSIONS}", [RELEASE_SESSIONS]),
    ("schedule=[4, 8]", ["[4, 8]"]),
    ("lr=0.1,0.01", ["0.1", "0.01"]),
    (f"sessions={RELEASE_SESSIONS},{{4: {{'lr': 0.05, 'r_newest': 4}}}}",
     [RELEASE_SESSIONS, "{4: {'lr': 0.05, 'r_newest': 4}}"]),
    ("schedule=[4, (8, 9)],[2]", ["[4, (8, 9)]", "[2]"]),
    ("class_order='a],b',shuffled", ["'a],b'", "shuffled"]),  # a bracket in quotes is text
])
def test_values_split_at_top_level_commas_only(word, values):
    assert sweep.parse_grid([word]) == [(word.split("=", 1)[0], values)]


def test_a_dict_value_plans_as_one_run(tmp_path):
    """The release's per-session settings against none: two runs, each with its whole dict."""
    script = os.path.join(ROOT, "train_mnist.py")
    grid = sweep.parse_grid([f"sessions={RELEASE_SESSIONS},{{}}"])
    runs = sweep.plan(script, grid, [0], str(tmp_path))
    assert [run.cfg.sessions for run in runs] == [{0: {"epochs": 5}, 4: {"lr": 0.05}}, {}]
    assert [run.name for run in runs] == ["default,seed=0", "sessions=__,seed=0"]


@pytest.mark.parametrize("word,problem", [
    ("schedule=[4, 8", "'[' is never closed"),
    ("schedule=[4, 8]],[2]", "']' closes no bracket"),
    ("sessions={0: {'epochs': 5)}", "')' closes a '{'"),
    ("class_order='a,b", "the quote ' is never closed"),
])
def test_unbalanced_values_stop_with_one_sentence(word, problem):
    with pytest.raises(ConfigError) as stop:
        sweep.parse_grid([word])
    assert str(stop.value) == (f"the grid entry {word!r} does not balance: {problem}; close each "
                               "bracket and quote, so that the commas inside stay with their "
                               "value.")


@pytest.mark.parametrize("words,pattern", [
    (["lr"], r"'lr' is not a field=value1,value2,\.\.\. entry of the grid"),
    (["seed=1,2"], r"the grid may not set seed: the sweep sets it for every run"),
    (["lr=0.1", "lr=0.2"], r"lr appears twice in the grid; give all its values in one entry"),
])
def test_bad_grid_entries(words, pattern):
    with pytest.raises(ConfigError, match=pattern):
        sweep.parse_grid(words)


def test_runs_are_named_by_what_differs_from_the_script(tmp_path):
    runs = sweep.plan(SCRIPT, sweep.parse_grid(["r=1,2", "variant=paper"]), [0, 1], str(tmp_path))
    names = [run.name for run in runs]
    assert names == ["default,seed=0", "default,seed=1", "r=2,seed=0", "r=2,seed=1"]
    run = runs[2]
    assert run.cfg.r == 2 and run.cfg.seed == 0
    assert run.cfg.checkpoint == os.path.join(str(tmp_path), "r=2,seed=0")
    assert run.cfg.savepoint == os.path.join(run.cfg.checkpoint, "models")
    assert run.texts[-2:] == ["seed=0", f"checkpoint={run.cfg.checkpoint}"]


def test_a_switch_is_named_only_where_it_changes_the_variant(tmp_path):
    grid = sweep.parse_grid(["variant=paper,official", "task_start=base,previous"])
    names = [run.name for run in sweep.plan(SCRIPT, grid, [0], str(tmp_path))]
    assert names == ["default,seed=0", "task_start=previous,seed=0",
                     "variant=official,task_start=base,seed=0", "variant=official,seed=0"]


def test_a_bad_value_stops_the_sweep_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match=r"^the combination lr=fast: the override 'lr=fast' "
                                          r"sets args.lr = 'fast', which is invalid"):
        sweep.plan(SCRIPT, sweep.parse_grid(["lr=0.1,fast"]), [0], str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("cores,jobs,want", [({0, 1}, 1, [[0, 1]]), ({0, 1}, 2, [[0], [1]]),
                                             ({0, 1}, 3, [[0], [1], [0]]),
                                             ({0, 1, 2, 3}, 2, [[0, 1], [2, 3]])])
def test_each_job_gets_its_share_of_the_cores(monkeypatch, cores, jobs, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: cores)
    assert sweep.core_sets(jobs) == want


def sweep_command(out, *more, jobs=2, seeds="0-1"):
    return [sys.executable, "-m", "utils.run.sweep", SCRIPT, "--seeds", seeds, "--jobs", str(jobs),
            "--out", str(out), *TINY, *more]


def run_sweep(out, *more, **kw):
    return subprocess.run(sweep_command(out, *more, **kw), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def pooled(out):
    return pd.read_csv(os.path.join(out, "report", "report.csv")).drop(columns=["runs"])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted sweep: lr 0.1 and 0.05, seeds 0 and 1, two jobs."""
    out = tmp_path_factory.mktemp("whole") / "sweep"
    done = run_sweep(out, "lr=0.1,0.05")
    assert done.returncode == 0, done.stderr
    return out, done


def test_a_sweep_runs_every_combination_and_reports_them_pooled(whole):
    out, done = whole
    state = json.load(open(out / "sweep.json"))
    names = sorted(run["name"] for run in state["runs"])
    prefix = "num_class=4,num_task=2,epochs=1,schedule=__,memory=20"
    assert names == sorted(f"{prefix}{lr},seed={s}" for lr in ("", ",lr=0.05") for s in (0, 1))
    assert all(run["status"] == "finished" and run["error"] is None for run in state["runs"])
    for run in state["runs"]:
        assert os.path.exists(os.path.join(run["checkpoint"], "session_1.json"))
        manifest = json.load(open(os.path.join(run["checkpoint"], "manifest.json")))
        assert manifest["command"].startswith("python3 train_digits.py 0 num_class=4")
        # two jobs: each on half the cores, with as many threads
        assert manifest["device"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert "4 of 4 runs finished" in done.stdout
    assert os.path.exists(out / "report" / "report.md")


def test_a_finished_sweep_reruns_as_a_no_op(whole):
    out, _ = whole
    logs = {f: open(out / "logs" / f).read() for f in os.listdir(out / "logs")}
    again = run_sweep(out, "lr=0.1,0.05")
    assert again.returncode == 0 and "4 of 4 runs finished" in again.stdout
    assert {f: open(out / "logs" / f).read() for f in os.listdir(out / "logs")} == logs


def files(folder):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, names in os.walk(folder) for f in names}


def test_a_killed_sweep_rerun_gives_the_uninterrupted_aggregate(whole, tmp_path):
    """One setting of the uninterrupted sweep (lr 0.1, both seeds, two jobs), killed once a run
    has finished a session and run again: its pooled row is the uninterrupted sweep's."""
    out = tmp_path / "sweep"
    process = subprocess.Popen(sweep_command(out, "lr=0.1"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it once some run has finished a session, not all
        finished = [d for d in (os.listdir(out) if out.exists() else [])
                    if os.path.exists(out / d / "session_0.json")]
        if finished:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    left = files(out)
    time.sleep(2.0)  # the runs in flight died with it (PR_SET_PDEATHSIG): nothing more is written
    assert files(out) == left
    unfinished = [d for d in os.listdir(out) if d.endswith(("seed=0", "seed=1"))
                  and not os.path.exists(out / d / "session_1.json")]
    assert unfinished  # killed mid-way
    done = run_sweep(out, "lr=0.1")
    assert done.returncode == 0, done.stderr
    # a setting alone has no label or column naming what sets it apart; its measurements are compared
    uninterrupted = pooled(whole[0])
    uninterrupted = uninterrupted[uninterrupted["group"] == "lr=0.1"].reset_index(drop=True)
    measured = [c for c in uninterrupted if c != "group" and not c.startswith("arg_")]
    assert len(uninterrupted) == 4 and len(measured) > 20
    pd.testing.assert_frame_equal(pooled(out)[measured], uninterrupted[measured])


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    listed = tmp_path / "order.txt"
    listed.write_text("0\n1\n2\n3\n")
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("0\n1\n2\nseven\n")  # passes the args check (a file), fails on the data
    done = run_sweep(tmp_path / "sweep", f"class_order={listed},{wrong}", jobs=1, seeds="0")
    assert done.returncode == 1
    state = json.load(open(tmp_path / "sweep" / "sweep.json"))
    status = {run["name"].split("class_order=")[1][:-len(",seed=0")]: run for run in state["runs"]}
    good, bad = status[str(listed).replace("/", "_")], status[str(wrong).replace("/", "_")]
    assert good["status"] == "finished" and bad["status"] == "failed"
    assert bad["error"] == ("exit status 2: error: args.class_order = '" + str(wrong) + "' names "
                            "classes the data set does not have (['seven']); list each class of "
                            "the data set at most once, one name per line.")
    assert "1 of 2 runs finished; failed:" in done.stdout
