"""``python3 train_X.py [start] field=value ...``: parsing, types, errors, the manifest and resuming."""
import json
import os
import subprocess
import sys

import pytest

import train_digits
from utils.config import check_args
from utils.errors import ConfigError
from utils.run import overrides
from utils.run.session import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_start_task_then_overrides():
    assert overrides.parse_command_line([]) == (0, [])
    assert overrides.parse_command_line(["3", "lr=0.1", "seed=2"]) == (3, ["lr=0.1", "seed=2"])
    assert overrides.parse_command_line(["lr=0.1"]) == (0, ["lr=0.1"])  # start 0 by default
    with pytest.raises(ConfigError, match=r"'0' is not a field=value override \(and the start "
                                          r"task, an integer, can only come first\); usage: "
                                          r"python3 train_digits.py \[start_task\] "
                                          r"\[field=value \.\.\.\]"):
        overrides.parse_command_line(["lr=0.1", "0"], "train_digits.py")
    with pytest.raises(ConfigError, match="the start task must be one integer, got 'two'"):
        overrides.parse_command_line(["two", "lr=0.1"])
    with pytest.raises(ConfigError, match="'=3' is not a field=value override"):
        overrides.parse_command_line(["1", "=3"])


@pytest.mark.parametrize("text,want", [
    ("lr=0.01", 0.01), ("epochs=3", 3), ("schedule=[2,4]", [2, 4]), ("schedule=[]", []),
    ("image_size=None", None), ("channels_last=True", True), ("amp=false", False),
    ("batch_forward=true", True), ("task_start=previous", "previous"),
    ("variant=official", "official"), ("checkpoint=results/x y", "results/x y"),
    ("data_path=123", "123"),  # a string field keeps its text, digits and all
    ("class_order=natural", "natural"), ("weight_decay=1e-4", 1e-4), ("momentum=0", 0),
    ("sessions={4: {'lr': 0.05}, 0: {'epochs': 5}}", {4: {"lr": 0.05}, 0: {"epochs": 5}}),
    ("sessions={}", {}), ("r_newest=4", 4), ("model_selection=release", "release"),
])
def test_values_are_read_as_the_fields_type(text, want):
    args, values = overrides.apply(train_digits.args, [text])
    name = text.split("=", 1)[0]
    assert values[name] == want and type(values[name]) is type(want)
    assert getattr(args, name) == want and issubclass(args, train_digits.args)
    assert train_digits.args.lr == 0.1  # the script's class itself is left alone


@pytest.mark.parametrize("text,pattern", [
    ("lrr=0.1", r"^the override 'lrr=0.1' names no field of args \(did you mean 'lr'\?\); the "
                r"fields are: dataset, "),
    ("epoch=3", r"\(did you mean 'epochs'\?\)"),
    ("lr=fast", r"^the override 'lr=fast' sets args.lr = 'fast', which is invalid; it must be a "
                r"number > 0.0.$"),
    ("epochs=2.5", r"args.epochs = 2.5, which is invalid; it must be an integer >= 1"),
    ("schedule=4;8", r"args.schedule = '4;8', which is invalid; it must be a list of epoch"),
    ("variant=reptile", r"it must be one of 'paper', 'official'"),
    ("batch_forward=yes", r"it must be None \(the variant's choice\), True or False"),
    ("sessions={1: {'lrr': 0.1}}", r"^the override \"sessions=\{1: \{'lrr': 0.1\}\}\": "
                                   r"args.sessions\[1\] sets 'lrr', which cannot change by session"),
    ("sessions={1: {'lr': 'fast'}}", r"args.sessions\[1\]\['lr'\] = 'fast' is invalid; it must be "
                                     r"a number > 0.0"),
    ("sessions=4", r"args.sessions = 4, which is invalid; it must be a dict"),
])
def test_a_bad_override_is_one_sentence_naming_it(text, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        overrides.apply(train_digits.args, [text])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("checkpoint,savepoint", [
    ("results/digits/lr", os.path.join("models", "digits", "lr")),
    ("runs", os.path.join("models", "runs")),
    ("/abs/run", os.path.join("/abs/run", "models")),
])
def test_the_models_follow_a_moved_checkpoint(checkpoint, savepoint):
    args, values = overrides.apply(train_digits.args, [f"checkpoint={checkpoint}"])
    assert args.savepoint == values["savepoint"] == savepoint
    args, _ = overrides.apply(train_digits.args, [f"checkpoint={checkpoint}", "savepoint=w"])
    assert args.savepoint == "w"  # unless given too


def test_the_command_line_quotes_what_a_shell_would_split():
    assert overrides.command("train_digits.py", 2, ["lr=0.1", "schedule=[4, 8]"]) == \
        "python3 train_digits.py 2 lr=0.1 'schedule=[4, 8]'"


def shrunk_words(tmp_path, *more):
    return ["train_digits.py", "0", "num_class=4", "num_task=2", "epochs=1", "schedule=[]",
            "memory=20", f"checkpoint={tmp_path}/results", f"savepoint={tmp_path}/models", *more]


def test_a_run_with_overrides_records_them(tmp_path):
    main(train_digits.args, shrunk_words(tmp_path, "lr=0.05", "variant=official"))
    results = tmp_path / "results"
    record = json.load(open(results / "session_1.json"))
    assert record["args"]["lr"] == 0.05 and record["args"]["variant"] == "official"
    assert record["args"]["task_start"] == "previous"  # the variant's switches follow it
    manifest = json.load(open(results / "manifest.json"))
    assert manifest["overrides"]["lr"] == 0.05 and manifest["overrides"]["num_task"] == 2
    assert manifest["overrides"]["schedule"] == [] and "savepoint" in manifest["overrides"]
    assert manifest["command"].startswith("python3 train_digits.py 0 num_class=4 num_task=2")
    assert manifest["command"].endswith("lr=0.05 variant=official")


def test_a_resume_refuses_overrides_that_change_the_experiment(tmp_path, capsys):
    words = shrunk_words(tmp_path, "seed=3")
    main(train_digits.args, words)
    os.remove(tmp_path / "results" / "session_1.json")
    resume = [words[0], "1"] + words[2:]
    with pytest.raises(SystemExit) as stop:  # seed left out: back to the class's 0
        main(train_digits.args, [w for w in resume if w != "seed=3"])
    assert stop.value.code == 2
    assert "args.seed = 0 but the finished sessions used 3" in capsys.readouterr().err
    main(train_digits.args, resume + ["epochs=2"])  # the same overrides, and a safe change
    manifest = json.load(open(tmp_path / "results" / "manifest.json"))
    entry = manifest["resumes"][-1]
    assert entry["command"].startswith("python3 train_digits.py 1 num_class=4")
    assert entry["overrides"]["epochs"] == 2 and entry["changed"] == {"epochs": [1, 2]}


def test_messages_name_the_command_with_its_overrides(tmp_path, capsys):
    words = shrunk_words(tmp_path, "lr=0.05")
    main(train_digits.args, words)
    with pytest.raises(SystemExit):
        main(train_digits.args, words)  # a finished run is never overwritten
    err = capsys.readouterr().err
    assert "the run is complete" in err
    os.remove(tmp_path / "results" / "session_1.json")
    with pytest.raises(SystemExit):
        main(train_digits.args, words)  # task 0 again: session 0 is finished
    assert ("resume with `python3 train_digits.py 1 num_class=4 num_task=2 epochs=1 "
            "'schedule=[]' memory=20") in capsys.readouterr().err


def test_the_class_still_works_without_overrides(tmp_path):
    args = type("args", (train_digits.args,), dict(
        num_class=4, num_task=2, epochs=1, schedule=[], memory=20,
        checkpoint=str(tmp_path / "r"), savepoint=str(tmp_path / "m")))
    main(args, ["train_digits.py"])
    assert json.load(open(tmp_path / "r" / "manifest.json"))["overrides"] == {}
    assert check_args(args).lr == 0.1


def test_the_script_takes_overrides_from_the_shell(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train_digits.py"), "0", "lr=abc"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("error: the override 'lr=abc' sets args.lr = 'abc', which is invalid; "
                           "it must be a number > 0.0.\n")
    assert not (tmp_path / "results").exists()
