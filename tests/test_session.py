"""The shared session loop: an end-to-end run, resume, never overwriting, corrupt checkpoints, CLI."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from utils.config import check_args
from utils.errors import ConfigError
from utils.files import sha256
from utils.run.session import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACY_KEYS = ["acc_task_agnostic", "acc_per_sample", "acc_task_aware", "acc_base",
                 "task_prediction_acc", "task_prediction_acc_per_sample", "per_task"]


def moved(args, tmp_path, name):
    return type("args", (args,), {"checkpoint": str(tmp_path / name / "results"),
                                  "savepoint": str(tmp_path / name / "models")})


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """Sessions 0..2 of the shrunk demo, run once for the tests of this module."""
    import train_digits
    tmp = tmp_path_factory.mktemp("full")

    class args(train_digits.args):
        checkpoint = str(tmp / "results")
        savepoint = str(tmp / "models")
        num_class, num_task, epochs, schedule, memory = 6, 3, 2, [1], 30
    records = run(args, 0, "train_digits.py")
    return args, records


def test_end_to_end_files_and_records(full_run):
    args, records = full_run
    assert [r["session"] for r in records] == [0, 1, 2]
    for t, record in enumerate(records):
        saved = json.load(open(os.path.join(args.checkpoint, f"session_{t}.json")))
        assert saved["seen_classes"] == 2 * (t + 1) and saved["continuum"] == 20
        for key in ACCURACY_KEYS + ["session", "seconds"]:
            assert key in saved
        for name in ("task_agnostic", "per_sample", "task_aware", "base"):
            assert len(saved["per_task"][name]) == t + 1
        assert 0.0 <= saved["acc_task_agnostic"] <= 100.0
        assert saved["memory_exemplars"] == 30 // (2 * (t + 1)) * 2 * (t + 1)
        losses = saved["train_loss_per_epoch"]  # one a session's epoch (2), the last as reported
        assert len(losses) == 2 and losses[-1] == saved["final_train_loss"]
        assert list(saved["acc_task_agnostic_by_continuum"]) == ["1", "2", "5", "10", "20", "50"]
        assert os.path.exists(os.path.join(args.savepoint, f"session_{t}_model.pt"))
        memory = json.load(open(os.path.join(args.savepoint, f"session_{t}_memory.json")))
        assert sorted(map(int, memory["exemplars"])) == list(range(2 * (t + 1)))
        assert saved["checksums"] == {  # what each file was written with, checked on resume
            f"session_{t}_model.pt": sha256(os.path.join(args.savepoint, f"session_{t}_model.pt")),
            f"session_{t}_memory.json": sha256(os.path.join(args.savepoint,
                                                            f"session_{t}_memory.json"))}
    assert records[0]["eta"] == 1.0 and records[2]["eta"] < records[1]["eta"] < 1.0
    rows = list(csv.DictReader(open(os.path.join(args.checkpoint, "summary.csv"))))
    assert [int(r["session"]) for r in rows] == [0, 1, 2]
    assert float(rows[2]["acc_task_aware"]) == pytest.approx(records[2]["acc_task_aware"], abs=0.01)
    assert json.load(open(os.path.join(args.checkpoint, "class_order.json"))) == {
        "class_order": [0, 1, 2, 3, 4, 5], "class_names": ["0", "1", "2", "3", "4", "5"]}
    assert open(os.path.join(args.checkpoint, "classes.txt")).read() == "0\n1\n2\n3\n4\n5\n"
    log = open(os.path.join(args.checkpoint, "log.txt")).read()
    assert "task-agnostic, continuum of 20 (the paper's number)" in log
    assert "session 2: 6 classes seen" in log


def test_every_session_leaves_an_up_to_date_report(full_run):
    import pandas as pd
    from PIL import Image

    from utils.report.metrics import protocol_metrics
    args, records = full_run
    table = pd.read_csv(os.path.join(args.checkpoint, "report.csv"))
    row = table[table.protocol == "task_agnostic"].iloc[0]
    assert row.sessions == 3 and row.final_acc == pytest.approx(records[2]["acc_task_agnostic"])
    want = protocol_metrics(records, "task_agnostic")
    assert row.avg_forgetting == pytest.approx(want["avg_forgetting"], abs=1e-4)
    assert "## Accuracy matrices" in open(os.path.join(args.checkpoint, "report.md")).read()
    with Image.open(os.path.join(args.checkpoint, "accuracy.png")) as image:
        image.verify()
    log = open(os.path.join(args.checkpoint, "log.txt")).read()
    assert (f"task-agnostic: final {records[2]['acc_task_agnostic']:.2f}, average incremental "
            f"{want['avg_incremental_acc']:.2f}") in log


def test_a_failing_report_does_not_cost_the_session(small_args, monkeypatch):
    import utils.run.session as S

    def broken(*a, **k):
        raise OSError("disk quota exceeded")
    monkeypatch.setattr(S, "write_report", broken)
    small_args.num_class, small_args.num_task, small_args.epochs = 2, 1, 1
    run(small_args, 0, "train_digits.py")
    assert os.path.exists(os.path.join(small_args.checkpoint, "session_0.json"))
    log = open(os.path.join(small_args.checkpoint, "log.txt")).read()
    assert ("the report could not be written (OSError: disk quota exceeded); run "
            f"`python3 -m utils.report {small_args.checkpoint}`") in log


def test_resume_matches_the_uninterrupted_run(full_run, tmp_path):
    args, records = full_run
    resumed = moved(args, tmp_path, "resumed")
    os.makedirs(resumed.checkpoint)
    os.makedirs(resumed.savepoint)
    for name in ("class_order.json", "session_0.json", "session_1.json"):
        shutil.copy(os.path.join(args.checkpoint, name), resumed.checkpoint)
    for name in ("session_0_model.pt", "session_0_memory.json",
                 "session_1_model.pt", "session_1_memory.json"):
        shutil.copy(os.path.join(args.savepoint, name), resumed.savepoint)
    before = snapshot(os.path.dirname(resumed.checkpoint))
    again = run(resumed, 2, "train_digits.py")
    assert [r["session"] for r in again] == [2]
    for key in ACCURACY_KEYS:
        assert again[0][key] == records[2][key], key
    a = torch.load(os.path.join(args.savepoint, "session_2_model.pt"), weights_only=True)
    b = torch.load(os.path.join(resumed.savepoint, "session_2_model.pt"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    same = [open(os.path.join(folder, "session_2_memory.json"), "rb").read()
            for folder in (args.savepoint, resumed.savepoint)]
    assert same[0] == same[1]
    after = snapshot(os.path.dirname(resumed.checkpoint))
    assert all(after[name] == data for name, data in before.items())  # earlier files untouched
    rows = list(csv.DictReader(open(os.path.join(resumed.checkpoint, "summary.csv"))))
    assert [int(r["session"]) for r in rows] == [0, 1, 2]


def test_finished_sessions_are_never_overwritten(full_run):
    args, _ = full_run
    before = snapshot(os.path.dirname(args.checkpoint))
    for start in (0, 1, 2):
        with pytest.raises(ConfigError, match=r"session_\d.json already holds finished session "
                                              r"\d, which is never overwritten; the run is complete"):
            run(args, start, "train_digits.py")
    assert snapshot(os.path.dirname(args.checkpoint)) == before


def test_resume_without_predecessor(small_args):
    with pytest.raises(ConfigError, match=r"cannot resume at task 2: .*session_1.json is missing, "
                                          r"so session 1 never finished; run `python3 "
                                          r"train_digits.py 0` first"):
        run(small_args, 2, "train_digits.py")


def test_resume_with_a_gap_names_the_missing_record(finished_two):
    os.remove(os.path.join(finished_two.checkpoint, "session_0.json"))
    with pytest.raises(ConfigError, match=r"cannot resume at task 2: .*session_0.json is missing, "
                                          r"so session 0 never finished"):
        run(finished_two, 2, "train_digits.py")


@pytest.fixture
def finished_two(full_run, tmp_path):
    """A copy of the full run with sessions 0 and 1 only, ready to resume at task 2."""
    args, _ = full_run
    copy = moved(args, tmp_path, "copy")
    shutil.copytree(args.checkpoint, copy.checkpoint)
    shutil.copytree(args.savepoint, copy.savepoint)
    os.remove(os.path.join(copy.checkpoint, "session_2.json"))
    return copy


@pytest.mark.parametrize("folder,name,content,pattern", [
    ("savepoint", "session_1_model.pt", b"not a checkpoint", r"session_1_model.pt is corrupt"),
    ("savepoint", "session_1_model.pt", None, r"session_1_model.pt is missing"),
    ("savepoint", "session_1_memory.json", b"{\"size\": 3", r"session_1_memory.json is corrupt"),
    ("savepoint", "session_1_memory.json", b"{\"size\": 30}", r"session_1_memory.json is corrupt or does not match"),
    ("checkpoint", "class_order.json", b"[1, 2", r"class_order.json is corrupt"),
    ("checkpoint", "class_order.json", b"{\"class_order\": [0, 0, 1, 2, 3, 4]}", r"class_order.json is corrupt or does not hold"),
    ("checkpoint", "class_order.json", b"{\"class_order\": [0, 1, 2, 3, 4, 99]}", r"class order .* names classes outside 0..9"),
])
def test_corrupt_or_missing_checkpoint_files(finished_two, folder, name, content, pattern):
    path = os.path.join(getattr(finished_two, folder), name)
    if content is None:
        os.remove(path)
    else:
        open(path, "wb").write(content)
    with pytest.raises(ConfigError, match=pattern) as err:
        run(finished_two, 2, "train_digits.py")
    if name == "class_order.json":  # every session needs it: redoing one cannot repair it
        assert "start again at task 0" in str(err.value)
    else:
        assert "train_digits.py 1" in str(err.value)
    assert not os.path.exists(os.path.join(finished_two.checkpoint, "session_2.json"))


def test_corrupt_earlier_record_stops_before_training(finished_two, monkeypatch):
    from utils.run import session
    open(os.path.join(finished_two.checkpoint, "session_0.json"), "w").write("{")
    monkeypatch.setattr(session, "train_session",
                        lambda *a, **k: pytest.fail("trained despite a corrupt record"))
    with pytest.raises(ConfigError, match=r"session_0.json is corrupt .*run `python3 "
                                          r"train_digits.py 0` to redo session 0"):
        run(finished_two, 2, "train_digits.py")


def test_model_of_another_configuration(finished_two):
    path = os.path.join(finished_two.savepoint, "session_1_model.pt")
    torch.save({"head.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ConfigError, match="does not fit the network of this args"):
        run(finished_two, 2, "train_digits.py")


def run_script(args_text, cwd, *argv):
    """Run a copy of train_digits.py whose args class is edited, as a user would edit it."""
    src = open(os.path.join(ROOT, "train_digits.py")).read()
    for old, new in args_text:
        assert old in src
        src = src.replace(old, new)
    (cwd / "train_digits.py").write_text(src)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "train_digits.py", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_bad_input_is_one_line_with_status_2(tmp_path):
    done = run_script([("class_per_task = 2 ", "class_per_task = 3 ")], tmp_path, "0")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: args.class_per_task = 3 does not divide")
    done = run_script([], tmp_path, "9")
    assert done.returncode == 2 and "the start task 9 is outside 0..4" in done.stderr
    assert not (tmp_path / "results").exists()


def test_demo_script_reaches_the_promised_accuracy(tmp_path):
    """`python3 train_digits.py 0` as shipped: five sessions, ≥ 80% task-agnostic at the end."""
    done = run_script([], tmp_path, "0")
    assert done.returncode == 0, done.stderr
    final = json.load(open(tmp_path / "results" / "digits" / "demo" / "session_4.json"))
    assert final["seen_classes"] == 10
    assert final["acc_task_agnostic"] >= 80.0
    assert "session 4: 10 classes seen" in done.stdout


def test_mnist_run_through_the_real_files(tmp_path):
    """Two sessions of train_mnist.py's args on a tiny MNIST written in its idx format."""
    import train_mnist
    from tests.support.fake_data import write_fake_mnist
    write_fake_mnist(tmp_path / "data", per_class_train=6, per_class_test=3)

    class args(train_mnist.args):
        data_path = str(tmp_path / "data")
        checkpoint = str(tmp_path / "results")
        savepoint = str(tmp_path / "models")
        epochs, schedule, memory, num_class, num_task, train_batch = 2, [], 10, 4, 2, 8
        sessions = {0: {"epochs": 1}}  # as the release's 5 epochs in session 0 (key 4 is gone)
    records = run(args, 0, "train_mnist.py")
    assert [r["seen_classes"] for r in records] == [2, 4]
    assert records[1]["num_test_samples"] == 12 and records[1]["memory_exemplars"] == 8
    assert [len(r["train_loss_per_epoch"]) for r in records] == [1, 2]
    assert [r["session_settings"]["epochs"] for r in records] == [1, 2]


@pytest.mark.parametrize("over", [{"variant": "official"}, {"selection": "herding"},
                                  {"class_order": "shuffled", "optimizer": "radam", "r": 2}])
def test_other_switches_run_end_to_end(small_args, over):
    args = type("args", (small_args,), dict(over, num_task=2, num_class=4))
    records = run(args, 0, "train_digits.py")
    assert [r["session"] for r in records] == [0, 1]
    for key, value in over.items():
        assert records[-1]["args"][key] == value
    order = json.load(open(os.path.join(args.checkpoint, "class_order.json")))["class_order"]
    assert (order == [0, 1, 2, 3]) == (over.get("class_order", "natural") == "natural")


def test_missing_data_writes_nothing(tmp_path, monkeypatch):
    import torchvision.datasets

    import train_mnist
    monkeypatch.setattr(torchvision.datasets.MNIST, "download",
                        lambda self: (_ for _ in ()).throw(OSError("offline")))

    class args(train_mnist.args):
        data_path = str(tmp_path / "data")
        checkpoint = str(tmp_path / "results")
        savepoint = str(tmp_path / "models")
    with pytest.raises(ConfigError, match="MNIST is not in args.data_path"):
        run(args, 0, "train_mnist.py")
    assert not (tmp_path / "results").exists() and not (tmp_path / "models").exists()


def test_memory_of_the_wrong_classes(finished_two):
    path = os.path.join(finished_two.savepoint, "session_1_memory.json")
    state = json.load(open(path))
    state["exemplars"].pop("3")
    json.dump(state, open(path, "w"))
    with pytest.raises(ConfigError, match=r"holds classes \[0, 1, 2\] but session 1 leaves "
                                          r"exemplars of classes 0..3; move .*session_1.json away "
                                          r"and run `python3 train_digits.py 1`"):
        run(finished_two, 2, "train_digits.py")


def test_ctrl_c_names_the_session_to_resume(small_args, monkeypatch, capsys):
    import utils.run.session as S
    real = S.run_session

    def interrupted(job, t):
        if t == 1:
            raise KeyboardInterrupt
        return real(job, t)
    monkeypatch.setattr(S, "run_session", interrupted)
    with pytest.raises(SystemExit) as stop:
        run(small_args, 0, "train_digits.py")
    assert stop.value.code == 130
    assert ("interrupted in session 1; sessions before it are saved: resume with "
            "`python3 train_digits.py 1`") in open(os.path.join(small_args.checkpoint, "log.txt")).read()
    assert os.path.exists(os.path.join(small_args.checkpoint, "session_0.json"))
    assert not os.path.exists(os.path.join(small_args.checkpoint, "session_1.json"))


def test_the_first_line_says_what_it_resumes_from_and_where_it_writes(full_run, finished_two):
    args, _ = full_run
    first = open(os.path.join(args.checkpoint, "log.txt")).read().splitlines()[0]
    assert first.endswith(f"train_digits.py: iTAML (paper variant) on digits, sessions 0..2 on cpu, "
                          f"starting afresh; results to {args.checkpoint}, weights to "
                          f"{args.savepoint}")
    open(os.path.join(finished_two.checkpoint, "log.txt"), "w").close()
    run(finished_two, 2, "train_digits.py")
    first = open(os.path.join(finished_two.checkpoint, "log.txt")).read().splitlines()[0]
    model, memory = (os.path.join(finished_two.savepoint, f"session_1_{n}")
                     for n in ("model.pt", "memory.json"))
    assert first.endswith(f"sessions 2..2 on cpu, resuming from finished session 1 ({model}, "
                          f"{memory}); results to {finished_two.checkpoint}, weights to "
                          f"{finished_two.savepoint}")


def test_a_changed_model_that_still_loads_is_caught_by_its_checksum(finished_two):
    path = os.path.join(finished_two.savepoint, "session_1_model.pt")
    state = torch.load(path, weights_only=True)
    state["head.weight"][0, 0] += 1
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"session_1_model.pt is corrupt: its checksum differs "
                                          r"from the one in .*session_1.json; restore the file, or "
                                          r"move .*session_1.json away and run `python3 "
                                          r"train_digits.py 1`"):
        run(finished_two, 2, "train_digits.py")


def test_a_changed_memory_that_still_parses_is_caught_by_its_checksum(finished_two):
    path = os.path.join(finished_two.savepoint, "session_1_memory.json")
    json.dump(json.load(open(path)), open(path, "w"))  # same exemplars, other bytes
    with pytest.raises(ConfigError, match=r"session_1_memory.json is corrupt: its checksum differs"):
        run(finished_two, 2, "train_digits.py")


def test_a_record_that_is_not_a_record(finished_two):
    open(os.path.join(finished_two.checkpoint, "session_0.json"), "w").write("[]")
    with pytest.raises(ConfigError, match=r"session_0.json is corrupt \(it is not the record of "
                                          r"session 0: it is not a JSON object\); move .* and run `python3 "
                                          r"train_digits.py 0`"):
        run(finished_two, 2, "train_digits.py")


def test_ctrl_c_just_after_a_record_names_the_next_session(small_args, monkeypatch):
    """Ctrl-C between session 1's record and the loop's next step: session 1 is finished."""
    import utils.run.session as S
    real = S.write_json

    def write_then_interrupt(path, obj):
        real(path, obj)
        if os.path.basename(path) == "session_1.json":
            raise KeyboardInterrupt
    monkeypatch.setattr(S, "write_json", write_then_interrupt)
    with pytest.raises(SystemExit):
        run(small_args, 0, "train_digits.py")
    assert "resume with `python3 train_digits.py 2`" in open(
        os.path.join(small_args.checkpoint, "log.txt")).read()


def test_session_t_trains_on_its_task_and_the_memory_of_session_t_minus_1(small_args, monkeypatch):
    """Alg. 1: session t's mini-batches come from D(t) ∪ M(t−1). Choosing M(t) first would add task
    t's own exemplars and shrink the older classes' share before training."""
    from incremental_dataloader import IncrementalData
    from utils.run import session
    seen = {}
    real = session.train_session

    def spy(method, loader, desc="train", test_accuracy=None):
        seen[method.session] = sorted(loader.dataset.indices)
        return real(method, loader, desc, test_accuracy)
    monkeypatch.setattr(session, "train_session", spy)
    run(small_args, 0, "train_digits.py")
    data = IncrementalData(check_args(small_args))
    for t in (1, 2):
        memory = json.load(open(os.path.join(small_args.savepoint, f"session_{t - 1}_memory.json")))
        kept = [i for indices in memory["exemplars"].values() for i in indices]
        classes = 2 * t  # M(t−1): every class of tasks 0..t−1, an equal share of the budget each
        assert len(memory["exemplars"]) == classes
        assert len(kept) == small_args.memory // classes * classes
        assert seen[t] == sorted(data.task_indices(t).tolist() + kept)
    assert seen[0] == sorted(data.task_indices(0).tolist())


def test_per_session_settings_reach_their_session_alone(small_args):
    """sessions = {1: {"lr": 1e6}} sends session 1, and only it, to NaN: session 0 trains at the
    args' lr and is saved, the divergence names session 1, and a resume without the entry runs it
    at the args' lr. The manifest lists what every session trains with."""
    args = type("args", (small_args,), {"sessions": {1: {"lr": 1e6}, 0: {"epochs": 1}}})
    with pytest.raises(ConfigError, match=r"session 1 diverged.*args.lr \(now 1e\+06\)"):
        run(args, 0, "train_digits.py")
    first = json.load(open(os.path.join(args.checkpoint, "session_0.json")))
    assert first["session_settings"]["lr"] == small_args.lr and len(first["train_loss_per_epoch"]) == 1
    manifest = json.load(open(os.path.join(args.checkpoint, "manifest.json")))
    assert manifest["args"]["sessions"] == {"0": {"epochs": 1}, "1": {"lr": 1e6}}
    assert [manifest["settings_by_session"][t]["lr"] for t in "012"] == [small_args.lr, 1e6,
                                                                         small_args.lr]
    assert [manifest["settings_by_session"][t]["epochs"] for t in "012"] == [1, 2, 2]
    records = run(type("args", (args,), {"sessions": {}}), 1, "train_digits.py")
    assert [r["session_settings"]["lr"] for r in records] == [small_args.lr] * 2
    resumed = json.load(open(os.path.join(args.checkpoint, "manifest.json")))["resumes"][-1]
    assert resumed["changed"]["sessions"] == [{"0": {"epochs": 1}, "1": {"lr": 1e6}}, {}]
    assert list(resumed["settings_by_session"]) == ["1", "2"]


def test_release_model_selection_in_a_run(small_args, tmp_path):
    """model_selection = "release": every epoch's base test accuracy is recorded, and the model the
    session keeps (and evaluates) is the selected epoch's, so the record's base accuracy is that
    epoch's accuracy exactly."""
    args = type("args", (small_args,), {"model_selection": "release", "epochs": 4, "lr": 0.5,
                                        "num_task": 2, "num_class": 4})
    records = run(args, 0, "train_digits.py")
    for r in records:
        assert r["model_selection"] == "release" and len(r["selection_test_acc_per_epoch"]) == 4
        assert r["acc_base"] == r["selection_test_acc_per_epoch"][r["selected_epoch"] - 1]
    assert any(r["selected_epoch"] < 4 for r in records)  # so the restore is what is tested
    plain = run(moved(type("args", (args,), {"model_selection": "last"}), tmp_path, "last"), 0,
                "train_digits.py")
    assert [(r["model_selection"], r["selected_epoch"]) for r in plain] == [("last", 4)] * 2
    assert "selection_test_acc_per_epoch" not in plain[0]
