"""Checks a user's ``args`` class and turns it into a plain namespace.

The table of fields (``utils/fields.py``) says what each field accepts and means, so a typo or a wrong
value is caught before any data is read, with one sentence naming the field; the checks here are
those between fields. The ``train_<dataset>.py`` scripts give every field explicitly; the few with
defaults are the ones later options added.
"""
import difflib
from numbers import Integral
from types import SimpleNamespace

import torch

from data_sources import dataset_spec, in_memory, resizable
from utils.errors import ConfigError
from utils.fields import FIELDS, REQUIRED, VARIANTS, gpu_only, of_kind

# The fields ``args.sessions`` may set for one session alone, as the release's scripts did by hand
# (MNIST: 5 epochs in session 0, lr 0.05 in session 4; SVHN: r = 4 for the newest task of session 4).
PER_SESSION = of_kind("session")


def check_args(args):
    """Validate a user's ``args`` class (or object); return a SimpleNamespace of every field."""
    given = {k: getattr(args, k) for k in dir(args) if not k.startswith("_")}
    given = {k: v for k, v in given.items() if not callable(v)}
    for name in given:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"args.{name} is not a known field{hint}; the fields are: "
                              f"{', '.join(FIELDS)}.")
    values = {}
    for name, f in FIELDS.items():
        if name not in given:
            if f.default is REQUIRED:
                raise ConfigError(f"args.{name} is missing; add it to the args class ({f.valid}).")
            values[name] = f.default
            continue
        if not f.check(given[name]):
            raise ConfigError(f"args.{name} = {given[name]!r} is invalid; it must be {f.valid}.")
        values[name] = given[name]
    cfg = SimpleNamespace(**values)
    cfg.schedule = list(cfg.schedule)
    for name, preset in VARIANTS[cfg.variant].items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, preset)
    if cfg.image_size is not None and not dataset_spec(cfg.dataset).resizable:
        raise ConfigError(f"args.image_size = {cfg.image_size} applies only to data sets read from "
                          f"image files ({', '.join(resizable())}); {cfg.dataset} has a fixed size, "
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
            if not FIELDS[name].check(value):
                raise ConfigError(f"{where}[{t}][{name!r}] = {value!r} is invalid; it must be "
                                  f"{FIELDS[name].valid}.")


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
    """``batched_tasks`` runs the tasks' first inner steps of iTAML together, so they must all start
    from the same weights."""
    if cfg.batched_tasks and cfg.method != "itaml":
        raise ConfigError(f"args.batched_tasks = True batches iTAML's inner loops, but args.method "
                          f"= {cfg.method!r} has none; set batched_tasks = False.")
    if cfg.batched_tasks and cfg.task_start != "base":
        raise ConfigError(f"args.batched_tasks = True runs the first inner step of all tasks "
                          f"together from the base weights, but args.task_start = "
                          f"{cfg.task_start!r} starts each task from the weights the one before it "
                          "left; set task_start = 'base' or batched_tasks = False.")


def _check_speed_options(cfg):
    """The GPU-only options fail here, on a machine or ``device`` without a GPU, rather than
    silently doing nothing."""
    if cfg.gpu_data and not dataset_spec(cfg.dataset).in_memory:
        raise ConfigError(f"args.gpu_data = True applies only to the data sets held in memory "
                          f"({', '.join(in_memory())}); {cfg.dataset} is read from image files, so "
                          "set gpu_data = False.")
    asked = [name for name in gpu_only() if getattr(cfg, name)]
    if not asked:
        return
    if cfg.device == "cpu" or not torch.cuda.is_available():
        where = "args.device = 'cpu'" if cfg.device == "cpu" else "no GPU is visible"
        raise ConfigError(f"args.{asked[0]} = True needs a GPU but {where}; set {asked[0]} = "
                          "False or run on a GPU.")
