"""Checks a user's ``args`` class and turns it into a plain namespace.

One schema lists every field, what it accepts and what it means, so a typo or a wrong value is caught
before any data is read, with one sentence naming the field. The ``train_<dataset>.py`` scripts give every
field explicitly; the few with defaults are the ones later options added.
"""
import difflib
import os
from numbers import Integral, Real
from types import SimpleNamespace

import torch

from utils.errors import ConfigError

REQUIRED = object()
DATASETS = ("mnist", "digits", "digits32", "cifar100", "svhn", "imagenet", "celeb", "cub200")
RESIZABLE = ("imagenet", "celeb", "cub200")  # read from image files, so any crop size works
IN_MEMORY = ("mnist", "digits", "digits32", "cifar100", "svhn")  # small enough to hold as one tensor on a GPU
GPU_ONLY = ("gpu_data", "amp", "compile")  # speed options that only pay off on a GPU

# The training the two variants stand for, one switch per way the release's computation differs
# from Alg. 1 as printed (docs/release.md, "The variants and their switches"). A switch left at
# None takes its variant's value; set one to change that step alone.
VARIANTS = {
    "paper": dict(task_start="base", meta_target="mean", task_optimizer="per_task",
                  batch_forward=False),
    "official": dict(task_start="previous", meta_target="last", task_optimizer="shared",
                     batch_forward=True),
}
SWITCHES = tuple(VARIANTS["paper"])


def _int(low=None):
    def check(v):
        return isinstance(v, Integral) and not isinstance(v, bool) and (low is None or v >= low)
    return check, f"an integer{'' if low is None else f' >= {low}'}"


def _real(low=0.0, strict=False):
    def check(v):
        if not isinstance(v, Real) or isinstance(v, bool):
            return False
        return v > low if strict else v >= low
    return check, f"a number {'>' if strict else '>='} {low}"


def _choice(*options):
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


def _str(empty=False):
    return (lambda v: isinstance(v, str) and (empty or v != "")), "a string" if empty else "a non-empty string"


def _milestones():
    def check(v):
        return isinstance(v, (list, tuple)) and all(
            isinstance(e, Integral) and not isinstance(e, bool) and e >= 0 for e in v)
    return check, "a list of epoch numbers >= 0"


def _class_order():
    def check(v):
        return isinstance(v, str) and (v in ("natural", "shuffled") or os.path.isfile(v))
    return check, "'natural', 'shuffled' or the path of an existing text file of class names"


def _image_size():
    def check(v):
        return v is None or (isinstance(v, Integral) and not isinstance(v, bool) and v >= 16)
    return check, "None (the data set's standard size) or an integer >= 16"


def _bool():
    return (lambda v: isinstance(v, bool)), "True or False"


def _optional(*options):
    return (lambda v: v is None or v in options), \
        "None (the variant's choice) or one of " + ", ".join(repr(o) for o in options)


def _device():
    def check(v):
        return isinstance(v, str) and (v in ("auto", "cpu") or v.startswith("cuda"))
    return check, "'auto', 'cpu' or 'cuda[:N]'"


# field -> (check, description of valid values, default)
SCHEMA = {
    "dataset": (*_choice(*DATASETS), REQUIRED),
    "checkpoint": (*_str(), REQUIRED),
    "savepoint": (*_str(), REQUIRED),
    "data_path": (*_str(empty=True), REQUIRED),
    "num_class": (*_int(1), REQUIRED),
    "class_per_task": (*_int(1), REQUIRED),
    "num_task": (*_int(1), REQUIRED),
    "class_order": (*_class_order(), REQUIRED),
    "seed": (*_int(0), REQUIRED),
    "memory": (*_int(1), REQUIRED),
    "selection": (*_choice("random", "herding", "first"), REQUIRED),
    "variant": (*_choice("paper", "official"), REQUIRED),
    "task_start": (*_optional("base", "previous"), None),
    "meta_target": (*_optional("mean", "last"), None),
    "task_optimizer": (*_optional("per_task", "shared"), None),
    "batch_forward": ((lambda v: v is None or isinstance(v, bool)),
                      "None (the variant's choice), True or False", None),
    "beta": (*_real(0.0), REQUIRED),
    "r": (*_int(1), REQUIRED),
    "r_newest": ((lambda v: v is None or _int(1)[0](v)), "None (the same as r) or an integer >= 1",
                 None),
    "optimizer": (*_choice("sgd", "adam", "radam"), REQUIRED),
    "lr": (*_real(0.0, strict=True), REQUIRED),
    "momentum": (*_real(0.0), REQUIRED),
    "weight_decay": (*_real(0.0), REQUIRED),
    "epochs": (*_int(1), REQUIRED),
    "schedule": (*_milestones(), REQUIRED),
    "gamma": (*_real(0.0, strict=True), REQUIRED),
    "model_selection": (*_choice("last", "release"), "last"),
    "sessions": ((lambda v: isinstance(v, dict)),
                 "a dict {session: {field: value}} (see utils/config.py: PER_SESSION)", {}),
    "train_batch": (*_int(1), REQUIRED),
    "test_batch": (*_int(1), REQUIRED),
    "num_workers": (*_int(0), REQUIRED),
    "continuum": (*_int(1), REQUIRED),
    "adapt_lr": (*_real(0.0, strict=True), REQUIRED),
    "adapt_epochs": (*_int(0), REQUIRED),
    "adapt_batch": (*_int(1), REQUIRED),
    "adapt_bn": (*_choice("release", "reestimate"), "release"),
    "device": (*_device(), "auto"),
    "augmentation": (*_choice("release", "corrected"), "release"),
    "image_size": (*_image_size(), None),
    "channels_last": (*_bool(), False),
    "amp": (*_bool(), False),
    "compile": (*_bool(), False),
    "gpu_data": (*_bool(), False),
    "batched_tasks": (*_bool(), False),
}


# The fields ``args.sessions`` may set for one session alone, as the release's scripts did by hand
# (MNIST: 5 epochs in session 0, lr 0.05 in session 4; SVHN: r = 4 for the newest task of session 4).
PER_SESSION = ("epochs", "lr", "schedule", "gamma", "momentum", "weight_decay", "r", "r_newest",
               "model_selection")


def check_args(args):
    """Validate a user's ``args`` class (or object); return a SimpleNamespace of every field."""
    given = {k: getattr(args, k) for k in dir(args) if not k.startswith("_")}
    given = {k: v for k, v in given.items() if not callable(v)}
    for name in given:
        if name not in SCHEMA:
            close = difflib.get_close_matches(name, SCHEMA, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"args.{name} is not a known field{hint}; the fields are: "
                              f"{', '.join(SCHEMA)}.")
    values = {}
    for name, (check, valid, default) in SCHEMA.items():
        if name not in given:
            if default is REQUIRED:
                raise ConfigError(f"args.{name} is missing; add it to the args class ({valid}).")
            values[name] = default
            continue
        if not check(given[name]):
            raise ConfigError(f"args.{name} = {given[name]!r} is invalid; it must be {valid}.")
        values[name] = given[name]
    cfg = SimpleNamespace(**values)
    cfg.schedule = list(cfg.schedule)
    for name, preset in VARIANTS[cfg.variant].items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, preset)
    if cfg.image_size is not None and cfg.dataset not in RESIZABLE:
        raise ConfigError(f"args.image_size = {cfg.image_size} applies only to data sets read from "
                          f"image files ({', '.join(RESIZABLE)}); {cfg.dataset} has a fixed size, "
                          "so remove the field.")
    _check_split(cfg)
    _check_sessions(cfg)
    _check_speed_options(cfg)
    check_batched_tasks(cfg)
    return cfg


def for_session(cfg, t):
    """The args session ``t`` runs with: ``cfg`` with ``args.sessions[t]``'s fields set."""
    return SimpleNamespace(**{**vars(cfg), **cfg.sessions.get(t, {})})


def session_settings(cfg, t):
    """{field: value} of every PER_SESSION field as session ``t`` uses it (records, manifest)."""
    scfg = for_session(cfg, t)
    return {name: getattr(scfg, name) for name in PER_SESSION}


def _check_sessions(cfg):
    """args.sessions: session numbers of this run, each with fields of PER_SESSION and valid values."""
    check_session_entries(cfg.sessions)
    for t in cfg.sessions:
        if not 0 <= t < cfg.num_task:
            raise ConfigError(f"args.sessions has the key {t!r}, which is not a session of this run; "
                              f"its keys must be session numbers 0..{cfg.num_task - 1}, so remove "
                              "that entry (sessions={} drops them all).")
    cfg.sessions = {t: dict(fields) for t, fields in sorted(cfg.sessions.items())}


def check_session_entries(sessions, where="args.sessions"):
    """The entries of a ``sessions`` dict, whatever the run's length: integer keys, dict values
    that set PER_SESSION fields to valid values. ``where`` names it in the sentence (an override
    names itself)."""
    for t, fields in sessions.items():
        if not (isinstance(t, Integral) and not isinstance(t, bool) and t >= 0):
            raise ConfigError(f"{where} has the key {t!r}; its keys must be session numbers "
                              "(integers >= 0), e.g. {4: {'lr': 0.05}}.")
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}[{t}] = {fields!r} is invalid; it must be a dict "
                              "{field: value}, e.g. {'epochs': 5}.")
        for name, value in fields.items():
            if name not in PER_SESSION:
                raise ConfigError(f"{where}[{t}] sets {name!r}, which cannot change by session; "
                                  f"it may set {', '.join(PER_SESSION)}.")
            check, valid, _ = SCHEMA[name]
            if not check(value):
                raise ConfigError(f"{where}[{t}][{name!r}] = {value!r} is invalid; it must be "
                                  f"{valid}.")


def describe_training(cfg):
    """The variant and any switch set away from it: "official variant", or
    "paper variant, task_start='previous'"."""
    changed = [f"{name}={getattr(cfg, name)!r}" for name, preset in VARIANTS[cfg.variant].items()
               if getattr(cfg, name) != preset]
    return ", ".join([f"{cfg.variant} variant"] + changed)


def _check_split(cfg):
    """The class-incremental split must be exact: T tasks of C classes cover num_class classes."""
    if cfg.num_class % cfg.class_per_task:
        raise ConfigError(f"args.class_per_task = {cfg.class_per_task} does not divide "
                          f"args.num_class = {cfg.num_class}; pick a divisor so every task has the "
                          "same number of classes.")
    if cfg.num_task * cfg.class_per_task != cfg.num_class:
        raise ConfigError(f"args.num_task * args.class_per_task = {cfg.num_task} * "
                          f"{cfg.class_per_task} != args.num_class = {cfg.num_class}; set "
                          f"num_task = {cfg.num_class // cfg.class_per_task}.")
    if cfg.memory < cfg.num_class:
        raise ConfigError(f"args.memory = {cfg.memory} is smaller than args.num_class = "
                          f"{cfg.num_class}, so the last session could keep no exemplar of some "
                          "classes; give at least one exemplar a class.")


def check_batched_tasks(cfg):
    """``batched_tasks`` runs the tasks' first inner steps together, so they must all start from the
    same weights."""
    if cfg.batched_tasks and cfg.task_start != "base":
        raise ConfigError(f"args.batched_tasks = True runs the first inner step of all tasks "
                          f"together from the base weights, but args.task_start = "
                          f"{cfg.task_start!r} starts each task from the weights the one before it "
                          "left; set task_start = 'base' or batched_tasks = False.")


def _check_speed_options(cfg):
    """The GPU-only options fail here, on a machine or ``device`` without a GPU, rather than
    silently doing nothing."""
    if cfg.gpu_data and cfg.dataset not in IN_MEMORY:
        raise ConfigError(f"args.gpu_data = True applies only to the data sets held in memory "
                          f"({', '.join(IN_MEMORY)}); {cfg.dataset} is read from image files, so "
                          "set gpu_data = False.")
    asked = [name for name in GPU_ONLY if getattr(cfg, name)]
    if not asked:
        return
    if cfg.device == "cpu" or not torch.cuda.is_available():
        where = "args.device = 'cpu'" if cfg.device == "cpu" else "no GPU is visible"
        raise ConfigError(f"args.{asked[0]} = True needs a GPU but {where}; set {asked[0]} = "
                          "False or run on a GPU.")
