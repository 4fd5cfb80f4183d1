"""manifest.json: what a run began with, every resume, and resumes that would change the experiment."""
import importlib.metadata
import json
import os
import shutil
import subprocess

import pytest

from utils.config import check_args
from utils.fields import FIELDS, of_kind
from utils.errors import ConfigError
from utils.run.manifest import check_resume, git_state, plain
from utils.run.session import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_folder(args, folder, **over):
    return type("args", (args,), {"checkpoint": str(folder / "results"),
                                  "savepoint": str(folder / "models"), **over})


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files if f != "log.txt"}


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """A finished run of two tasks of two digits, one epoch each."""
    import train_digits
    args = in_folder(train_digits.args, tmp_path_factory.mktemp("two"), num_class=4, num_task=2,
                     epochs=1, schedule=[], memory=20, device="cpu")
    run(args, 0, "train_digits.py")
    return args


@pytest.fixture
def resumable(two_tasks, tmp_path):
    """A copy of that run with session 1 unfinished, ready to resume at task 1."""
    copy = in_folder(two_tasks, tmp_path)
    shutil.copytree(two_tasks.checkpoint, copy.checkpoint)
    shutil.copytree(two_tasks.savepoint, copy.savepoint)
    os.remove(os.path.join(copy.checkpoint, "session_1.json"))
    return copy


def manifest_of(args):
    return json.load(open(os.path.join(args.checkpoint, "manifest.json")))


def log_of(args):
    return open(os.path.join(args.checkpoint, "log.txt")).read()


def test_a_fresh_run_records_args_seed_versions_commit_and_device(two_tasks):
    manifest = manifest_of(two_tasks)
    assert manifest["command"] == "python3 train_digits.py 0"
    assert manifest["args"] == plain(check_args(two_tasks)) and manifest["seed"] == 0
    for name in ("torch", "numpy", "scikit-learn"):
        assert manifest["versions"][name] == importlib.metadata.version(name)
    assert manifest["git"] == git_state()
    assert manifest["device"]["name"] == "cpu" and manifest["device"]["threads"] >= 1
    assert manifest["resumes"] == []


def test_the_commit_is_the_code_s(tmp_path, monkeypatch):
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the code is not a git checkout here")
    assert git_state()["commit"] == head


def test_no_git_or_no_checkout_records_null(tmp_path, monkeypatch):
    assert git_state(str(tmp_path)) == {"commit": None, "dirty": None}  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    assert git_state() == {"commit": None, "dirty": None}


def test_safe_changes_are_allowed_logged_and_recorded(resumable):
    args = type("args", (resumable,), {"epochs": 2, "test_batch": 128})
    run(args, 1, "train_digits.py")
    entry = manifest_of(args)["resumes"][-1]
    assert entry["task"] == 1 and entry["command"] == "python3 train_digits.py 1"
    # the copy lives in other folders, which counts as a change too
    assert entry["changed"].pop("checkpoint")[1] == resumable.checkpoint
    assert entry["changed"].pop("savepoint")[1] == resumable.savepoint
    assert entry["changed"] == {"epochs": [1, 2], "test_batch": [256, 128]}
    log = log_of(args)
    assert "args changed since the finished sessions (recorded in manifest.json): checkpoint" in log
    assert "epochs 1 → 2, test_batch 256 → 128" in log
    record = json.load(open(os.path.join(args.checkpoint, "session_1.json")))
    assert record["args"]["epochs"] == 2


REFUSALS = [
    ({"seed": 1}, "seed"), ({"memory": 40}, "memory"), ({"selection": "herding"}, "selection"),
    ({"variant": "official"}, "variant"), ({"class_order": "shuffled"}, "class_order"),
    ({"dataset": "mnist"}, "dataset"), ({"num_class": 6, "num_task": 3}, "num_class"),
    ({"class_per_task": 1, "num_task": 4}, "class_per_task"),
    ({"task_start": "previous"}, "task_start"), ({"meta_target": "last"}, "meta_target"),
    ({"task_optimizer": "shared"}, "task_optimizer"), ({"batch_forward": True}, "batch_forward"),
    ({"method": "er"}, "method"), ({"er_loss": "task_bce"}, "er_loss"),
]


@pytest.mark.parametrize("over,field", REFUSALS)
def test_a_change_of_experiment_is_refused_naming_the_field(resumable, over, field):
    before = snapshot(os.path.dirname(resumable.checkpoint))
    with pytest.raises(ConfigError, match=rf"args.{field} = .* but the finished sessions used .* "
                                          rf"\(.*session_0.json\); changing it on resume would "
                                          rf"change {FIELDS[field].fixed}, so set it back"):
        run(type("args", (resumable,), over), 1, "train_digits.py")
    assert snapshot(os.path.dirname(resumable.checkpoint)) == before  # nothing written


def record_of(cfg, **drop_or_set):
    """A session record's args as check_resume reads them: ``field=None`` drops the field (a
    record older than it), any other value sets it."""
    saved = plain(cfg)
    for field, value in drop_or_set.items():
        saved.pop(field) if value is None else saved.__setitem__(field, value)
    return {"args": saved}


def test_augmentation_is_fixed_on_resume_where_it_changes_the_images(cfg_factory):
    cifar = cfg_factory(dataset="cifar100", num_class=100, class_per_task=10, num_task=10,
                        memory=2000)
    with pytest.raises(ConfigError, match=r"args.augmentation = 'release' but the finished "
                                          r"sessions used 'corrected' .* change the images' "
                                          r"augmentation and normalisation"):
        check_resume(cifar, record_of(cifar, augmentation="corrected"), "s.json", None)
    digits = cfg_factory()  # digits are only normalised: either setting reads them alike
    assert check_resume(digits, record_of(digits, augmentation="corrected"), "s.json", None) == \
        {"augmentation": ["corrected", "release"]}


@pytest.mark.parametrize("variant,changed", [("paper", {}), ("official", {"batch_forward"})])
def test_a_record_older_than_the_switches_reads_as_what_it_ran(cfg_factory, variant, changed):
    """Before the switches, "paper" was today's paper preset and "official" today's less the
    extra forward; before augmentation there was only "corrected"."""
    cfg = cfg_factory(variant=variant, augmentation="corrected")
    old = record_of(cfg, task_start=None, meta_target=None, task_optimizer=None,
                    batch_forward=None, augmentation=None)
    if not changed:
        assert check_resume(cfg, old, "s.json", None) == {}
        return
    with pytest.raises(ConfigError, match=r"args.batch_forward = True but the finished sessions "
                                          r"used False"):
        check_resume(cfg, old, "s.json", None)
    assert check_resume(cfg_factory(variant=variant, augmentation="corrected",
                                    batch_forward=False), old, "s.json", None) == {}


def test_every_experiment_field_has_its_refusal_tested():
    """A field of kind "experiment" added to the table needs a case above. The digits cannot change
    num_task alone (the split check stops it first), image_size (a fixed size) or augmentation (the
    digits read alike under both: tested with digits32 and CIFAR-100 in test_digits_cnn.py and
    below)."""
    alone = {"num_task", "image_size", "augmentation"}
    assert {field for _, field in REFUSALS} | alone == set(of_kind("experiment"))


def test_a_moved_class_list_is_the_same_order(two_tasks, tmp_path):
    """A class list may move to another path (another machine); a list in another order may not."""
    listed = tmp_path / "classes.txt"
    listed.write_text("3\n1\n0\n2\n")
    args = in_folder(two_tasks, tmp_path / "run", class_order=str(listed))
    run(args, 0, "train_digits.py")
    os.remove(os.path.join(args.checkpoint, "session_1.json"))
    moved = tmp_path / "elsewhere.txt"
    moved.write_text("3\n1\n0\n2\n9\n")  # more classes than the run uses do no harm
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("1\n3\n0\n2\n")
    with pytest.raises(ConfigError, match=r"args.class_order = .*reordered.txt"):
        run(type("args", (args,), {"class_order": str(reordered)}), 1, "train_digits.py")
    run(type("args", (args,), {"class_order": str(moved)}), 1, "train_digits.py")
    assert manifest_of(args)["resumes"][-1]["changed"] == {"class_order": [str(listed), str(moved)]}


def test_a_run_without_a_manifest_gets_one_on_resume(resumable):
    os.remove(os.path.join(resumable.checkpoint, "manifest.json"))
    run(resumable, 1, "train_digits.py")
    manifest = manifest_of(resumable)
    record = json.load(open(os.path.join(resumable.checkpoint, "session_0.json")))
    assert manifest["rebuilt_from"] == os.path.join(resumable.checkpoint, "session_0.json")
    assert manifest["args"] == record["args"] and manifest["versions"] is None
    assert [r["task"] for r in manifest["resumes"]] == [1]


@pytest.mark.parametrize("content,problem", [("{", r"is corrupt \(Expecting"),
                                             ("[]", r"is corrupt \(it is not a run manifest\)")])
def test_a_corrupt_manifest_is_named(resumable, content, problem):
    open(os.path.join(resumable.checkpoint, "manifest.json"), "w").write(content)
    with pytest.raises(ConfigError, match=rf"manifest.json {problem}.*; restore it, or move it away "
                                          r"to resume without the record of earlier starts, and "
                                          r"run `python3 train_digits.py 1` again"):
        run(resumable, 1, "train_digits.py")


def test_resuming_on_another_setup_warns(resumable, monkeypatch):
    import utils.run.manifest as M
    real = M.versions
    monkeypatch.setattr(M, "versions", lambda: {**real(), "torch": "0.0"})
    run(resumable, 1, "train_digits.py")
    assert (f"resuming on another setup (torch {importlib.metadata.version('torch')} → 0.0): the "
            "sessions from here may differ slightly") in log_of(resumable)
    assert manifest_of(resumable)["resumes"][-1]["versions"]["torch"] == "0.0"
