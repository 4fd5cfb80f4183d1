"""``python3 -m utils.run.evaluate``: a finished run evaluated again, reproducibly, without touching it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from utils.errors import ConfigError
from utils.report.tables import pooled_report
from utils.run.evaluate import default_out, reevaluate
from utils.run.session import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURED = ("acc_task_agnostic", "acc_per_sample", "acc_task_aware", "acc_base",
            "task_prediction_acc", "task_prediction_acc_per_sample", "per_task",
            "acc_task_agnostic_by_continuum", "task_prediction_acc_by_continuum",
            "num_test_samples")


def snapshot(*folders):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for folder in folders for d, _, files in os.walk(folder) for f in files}


def measured(record):
    return {k: record[k] for k in MEASURED}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Three sessions of the shrunk MLP demo, run once for this module."""
    import train_digits
    tmp = tmp_path_factory.mktemp("evaluate")

    class args(train_digits.args):
        checkpoint = str(tmp / "results" / "run")
        savepoint = str(tmp / "models" / "run")
        num_class, num_task, epochs, schedule, memory = 6, 3, 2, [1], 30
    return args, run(args, 0, "train_digits.py")


def test_without_overrides_the_run_is_measured_again_exactly(digits_run, tmp_path):
    args, records = digits_run
    before = snapshot(args.checkpoint, args.savepoint)
    again = reevaluate(args.checkpoint, [], str(tmp_path / "again"))
    assert [measured(r) for r in again] == [measured(r) for r in records]
    assert snapshot(args.checkpoint, args.savepoint) == before  # the run is only read
    assert all(r["evaluated_from"].endswith(f"session_{r['session']}.json") for r in again)


def test_an_override_writes_a_new_folder_named_by_it(digits_run):
    args, records = digits_run
    before = snapshot(args.checkpoint, args.savepoint)
    out = default_out(args.checkpoint, ["adapt_lr=1e-4", "continuum=5"])
    assert out == os.path.normpath(args.checkpoint) + "_eval_adapt_lr=1e-4_continuum=5"
    again = reevaluate(args.checkpoint, ["adapt_lr=1e-4", "continuum=5"])
    assert snapshot(args.checkpoint, args.savepoint) == before
    assert sorted(os.listdir(out)) == sorted(
        ["class_order.json", "classes.txt", "manifest.json", "log.txt", ".lock", "summary.csv",
         "report.csv", "report.md", "accuracy.png", "continuum.png", "loss.png"]
        + [f"session_{t}.json" for t in range(3)])
    for old, new in zip(records, again):
        assert new["args"]["adapt_lr"] == 1e-4 and new["continuum"] == 5
        assert new["evaluation_overrides"] == {"adapt_lr": 1e-4, "continuum": 5}
        assert new["acc_base"] == old["acc_base"]  # the base model is the saved one
        assert new["train_loss_per_epoch"] == old["train_loss_per_epoch"]
        assert "5" in new["acc_task_agnostic_by_continuum"]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["evaluated_from"] == os.path.normpath(args.checkpoint)
    # the pooled report reads it as a run of its own setting
    table = pooled_report([args.checkpoint, out], str(os.path.dirname(out) + "/pooled"))
    assert len(set(table.group)) == 2


def test_a_killed_evaluation_resumes_and_keeps_what_it_finished(digits_run, tmp_path, monkeypatch):
    import utils.run.evaluate as E
    args, records = digits_run
    out = str(tmp_path / "resumed")
    real, calls = E.evaluate, []

    def dies_in_session_2(model, data, memory, t, *rest, **kw):
        if t == 2:
            raise KeyboardInterrupt
        calls.append(t)
        return real(model, data, memory, t, *rest, **kw)
    monkeypatch.setattr(E, "evaluate", dies_in_session_2)
    with pytest.raises(KeyboardInterrupt):
        reevaluate(args.checkpoint, ["adapt_epochs=2"], out)
    kept = snapshot(out)
    assert sorted(n for n in os.listdir(out) if n.startswith("session_")) == [
        "session_0.json", "session_1.json"]
    monkeypatch.setattr(E, "evaluate", real)
    again = reevaluate(args.checkpoint, ["adapt_epochs=2"], out)
    assert [r["session"] for r in again] == [0, 1, 2] and calls == [0, 1]
    assert all(snapshot(out)[k] == v for k, v in kept.items() if "session_" in k)
    with pytest.raises(ConfigError, match=r"session_0.json was evaluated with \{'adapt_epochs': 2\}, "
                                          r"not \{'adapt_epochs': 3\}; give another --out"):
        reevaluate(args.checkpoint, ["adapt_epochs=3"], out)


@pytest.mark.parametrize("texts,pattern", [
    (["lr=0.5"], r"^the override 'lr=0.5' changes args.lr, which the saved models were trained "
                 r"with; utils.run.evaluate takes only how they are tested and where and how fast "
                 r"that runs \(the kinds inference, speed, machine: test_batch, num_workers, "
                 r"continuum, adapt_lr, "),
    (["adapt_lr=fast"], r"args.adapt_lr = 'fast', which is invalid; it must be a number > 0.0"),
    (["adapt_bn=sometimes"], r"it must be one of 'release', 'reestimate'"),
    (["adaptlr=1"], r"names no field of args \(did you mean 'adapt_lr'\?\)"),
    (["adapt_lr"], r"'adapt_lr' is not a field=value override"),
    (["savepoint=/nowhere"], r"the run's models are not in /nowhere \(its args.savepoint\); give "
                             r"the folder that holds its session_<t>_model.pt with savepoint=PATH"),
])
def test_bad_input_is_one_sentence(digits_run, texts, pattern):
    args, _ = digits_run
    with pytest.raises(ConfigError, match=pattern) as err:
        reevaluate(args.checkpoint, texts, args.checkpoint + "_bad")
    assert "\n" not in str(err.value)
    assert not os.path.exists(args.checkpoint + "_bad")


def test_the_run_folder_itself_is_refused(digits_run):
    args, _ = digits_run
    with pytest.raises(ConfigError, match="is the run's own folder, which utils.run.evaluate never "
                                          "writes"):
        reevaluate(args.checkpoint, ["continuum=5"], args.checkpoint)


def test_the_command_line(digits_run, tmp_path):
    args, records = digits_run
    out = str(tmp_path / "cli")
    done = subprocess.run([sys.executable, "-m", "utils.run.evaluate", args.checkpoint, "continuum=10",
                           "--out", out], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.load(open(os.path.join(out, "session_2.json")))["continuum"] == 10
    bad = subprocess.run([sys.executable, "-m", "utils.run.evaluate", args.checkpoint, "epochs=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: the override 'epochs=3' changes")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """Two sessions of the BatchNorm demo (train_digits_cnn.py) shrunk: its single update draws
    random crops, flips and rotations."""
    import train_digits_cnn
    tmp = tmp_path_factory.mktemp("cnn")

    class args(train_digits_cnn.args):
        checkpoint = str(tmp / "results" / "run")
        savepoint = str(tmp / "models" / "run")
        num_class, num_task, epochs, schedule, memory, train_batch = 4, 2, 1, [], 40, 32
        adapt_batch = 8
    return args, run(args, 0, "train_digits_cnn.py")


def test_a_saved_session_evaluates_the_same_in_any_process(cnn_run, tmp_path):
    """The run's records (made at the end of training, after its draws) equal a later evaluation's
    in two other processes: one evaluates both sessions, the other finds session 0 done and starts
    at session 1, so each reaches the single update with another history of draws."""
    args, records = cnn_run
    outs = [tmp_path / "all", tmp_path / "from_1"]
    os.makedirs(outs[1])
    for out in outs:
        if out == outs[1]:
            shutil.copy(os.path.join(outs[0], "session_0.json"), out)
        done = subprocess.run([sys.executable, "-m", "utils.run.evaluate", args.checkpoint, "--out",
                               str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    for out in outs:
        again = [json.load(open(os.path.join(out, f"session_{t}.json"))) for t in (0, 1)]
        assert [measured(r) for r in again] == [measured(r) for r in records]
