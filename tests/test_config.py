"""Every bad ``args`` gets one sentence naming the field, before any data is read."""
import importlib

import pytest

import train_digits
from utils.config import PER_SESSION, check_args, for_session, session_settings
from utils.fast.device import resolve_device
from utils.fields import FIELDS, SWITCHES, VARIANTS
from utils.errors import ConfigError
from utils.run.overrides import parse_command_line
from utils.run.session import run


def shrunk(**over):
    return type("args", (train_digits.args,), over)


@pytest.mark.parametrize("name", ["digits", "digits_cnn", "mnist", "svhn", "cifar", "imagenet",
                                  "celeb", "cub"])
def test_shipped_args_are_valid_and_complete(name):
    """Every field is written out in the script, and the run uses what is written: check_args
    validates the values, it rewrites none but the switches, which the scripts leave to the variant
    (so that one word, args.variant, names the training)."""
    script = importlib.import_module(f"train_{name}")
    assert [field for field in FIELDS if not hasattr(script.args, field)] == []
    cfg = check_args(script.args)
    assert {s: getattr(script.args, s) for s in SWITCHES} == dict.fromkeys(SWITCHES)
    assert {s: getattr(cfg, s) for s in SWITCHES} == VARIANTS[script.args.variant]
    written = {field: getattr(script.args, field) for field in FIELDS if field not in SWITCHES}
    assert {field: getattr(cfg, field) for field in written} == written


@pytest.mark.parametrize("over,pattern", [
    ({"class_per_task": 3, "num_task": 3}, r"args.class_per_task = 3 does not divide args.num_class = 10"),
    ({"num_task": 4}, r"args.num_task \* args.class_per_task = 4 \* 2 != args.num_class = 10; set num_task = 5"),
    ({"memory": 9}, r"args.memory = 9 is smaller than args.num_class = 10"),
    ({"dataset": "places365"}, r"args.dataset = 'places365' is invalid; it must be one of 'mnist', 'digits', 'digits32', 'cifar100', 'svhn', 'imagenet', 'celeb', 'cub200'"),
    ({"image_size": 64}, r"args.image_size = 64 applies only to data sets read from image files \(imagenet, celeb, cub200\); digits has a fixed size"),
    ({"dataset": "imagenet", "image_size": 8}, r"args.image_size = 8 is invalid; it must be None \(the data set's standard size\) or an integer >= 16"),
    ({"class_order": "nowhere/classes.txt"}, r"args.class_order = 'nowhere/classes.txt' is invalid; it must be 'natural', 'shuffled', 'seed1993' or the path of an existing text file"),
    ({"optimizer": "adagrad"}, r"args.optimizer = 'adagrad' is invalid; it must be one of 'sgd', 'adam', 'radam'"),
    ({"variant": "reptile"}, r"args.variant = 'reptile' is invalid; it must be one of 'paper', 'official'"),
    ({"task_start": "middle"}, r"args.task_start = 'middle' is invalid; it must be None \(the variant's choice\) or one of 'base', 'previous'"),
    ({"meta_target": "median"}, r"args.meta_target = 'median' is invalid; it must be None \(the variant's choice\) or one of 'mean', 'last'"),
    ({"task_optimizer": "each"}, r"args.task_optimizer = 'each' is invalid; it must be None \(the variant's choice\) or one of 'per_task', 'shared'"),
    ({"batch_forward": 1}, r"args.batch_forward = 1 is invalid; it must be None \(the variant's choice\), True or False"),
    ({"augmentation": "none"}, r"args.augmentation = 'none' is invalid; it must be one of 'release', 'corrected'"),
    ({"selection": "kmeans"}, r"args.selection = 'kmeans' is invalid"),
    ({"class_order": "random"}, r"args.class_order = 'random' is invalid"),
    ({"lr": "0.1"}, r"args.lr = '0.1' is invalid; it must be a number > 0.0"),
    ({"epochs": 2.5}, r"args.epochs = 2.5 is invalid; it must be an integer >= 1"),
    ({"r": True}, r"args.r = True is invalid"),
    ({"continuum": 0}, r"args.continuum = 0 is invalid"),
    ({"schedule": [5, "x"]}, r"args.schedule = \[5, 'x'\] is invalid; it must be a list of epoch numbers"),
    ({"clas_per_task": 2}, r"args.clas_per_task is not a known field \(did you mean 'class_per_task'\?\)"),
    ({"r_newest": 0}, r"args.r_newest = 0 is invalid; it must be None \(the same as r\) or an integer >= 1"),
    ({"model_selection": "best"}, r"args.model_selection = 'best' is invalid; it must be one of 'last', 'release'"),
    ({"sessions": [0]}, r"args.sessions = \[0\] is invalid; it must be a dict"),
    ({"sessions": {5: {"lr": 0.1}}}, r"args.sessions has the key 5, which is not a session of this run; its keys must be session numbers 0..4, so remove that entry"),
    ({"sessions": {"4": {"lr": 0.1}}}, r"args.sessions has the key '4'; its keys must be session numbers \(integers >= 0\)"),
    ({"sessions": {1: 5}}, r"args.sessions\[1\] = 5 is invalid; it must be a dict \{field: value\}"),
    ({"sessions": {1: {"seed": 3}}}, r"args.sessions\[1\] sets 'seed', which cannot change by session; it may set r, r_newest, lr"),
    ({"sessions": {1: {"lr": -1}}}, r"args.sessions\[1\]\['lr'\] = -1 is invalid; it must be a number > 0.0"),
    ({"sessions": {1: {"r_newest": 0}}}, r"args.sessions\[1\]\['r_newest'\] = 0 is invalid"),
])
def test_bad_args_one_sentence(over, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        check_args(shrunk(**over))
    assert "\n" not in str(err.value)


def test_missing_field_is_named():
    class partial:
        pass
    for name in FIELDS:
        if name not in ("device", "image_size"):
            setattr(partial, name, getattr(train_digits.args, name))
    delattr(partial, "beta")
    with pytest.raises(ConfigError, match=r"args.beta is missing; add it to the args class"):
        check_args(partial)
    partial.beta = 1.0
    cfg = check_args(partial)
    assert cfg.device == "auto" and cfg.image_size is None  # the fields with a default


@pytest.mark.parametrize("start", [-1, 5, 7])
def test_start_task_out_of_range(start, tmp_path):
    args = shrunk(checkpoint=str(tmp_path / "r"), savepoint=str(tmp_path / "m"))
    with pytest.raises(ConfigError, match=rf"the start task {start} is outside 0..4 \(args.num_task = 5\)"):
        run(args, start)
    assert not (tmp_path / "r").exists()  # nothing written for bad input


def test_start_task_must_be_an_integer():
    with pytest.raises(ConfigError, match="the start task must be one integer, got 'two'"):
        parse_command_line(["two"], "train_digits.py")
    assert [parse_command_line(words)[0] for words in ([], ["3"], ["-1"])] == [0, 3, -1]


def test_cuda_without_gpu(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"args.device = 'cuda' but no GPU is visible"):
        resolve_device("cuda")
    assert str(resolve_device("auto")) == "cpu"


def test_a_session_runs_with_its_own_settings():
    """args.sessions[t] replaces those fields for session t alone; every other session, and every
    other field, keeps the args' values."""
    cfg = check_args(shrunk(sessions={4: {"lr": 0.05, "r_newest": 4}, 0: {"epochs": 5}}))
    assert list(cfg.sessions) == [0, 4]  # kept in session order
    first, last, middle = for_session(cfg, 0), for_session(cfg, 4), for_session(cfg, 2)
    assert (first.epochs, first.lr, first.r_newest) == (5, cfg.lr, None)
    assert (last.epochs, last.lr, last.r_newest) == (cfg.epochs, 0.05, 4)
    assert vars(middle) == vars(cfg)
    assert vars(for_session(cfg, 4)) == {**vars(cfg), "lr": 0.05, "r_newest": 4}
    assert session_settings(cfg, 4) == {name: getattr(last, name) for name in PER_SESSION}
    assert cfg.sessions[4] == {"lr": 0.05, "r_newest": 4}  # for_session leaves the args alone
