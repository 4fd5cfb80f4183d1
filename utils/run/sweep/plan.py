"""A sweep's plan: the grid of values, the seeds, and every run they make, each checked as its script
would check it before any starts, and named by what changes it (``variant=official,seed=3``)."""
import importlib.util
import itertools
import os
import re

from utils import files
from utils.config import check_args
from utils.errors import ConfigError
from utils.run import overrides


def parse_seeds(text):
    """"0-9", "0,3,7" or "4" -> sorted seeds."""
    seeds = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            seeds.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a list of seeds; write e.g. 0-9 or 0,3,7.") \
            from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r} names no seed >= 0; write e.g. 0-9 or 0,3,7.")
    return sorted(seeds)


CLOSING = {"[": "]", "(": ")", "{": "}"}


def split_values(text, entry=None):
    """A grid entry's values: split at the commas outside brackets and quotes, so that a list,
    tuple or dict keeps its own (``schedule=[4,8],[2]`` is two values, ``sessions={0: {'epochs':
    5}, 4: {'lr': 0.05}}`` one). ``entry`` names the entry in the sentence of an unbalanced one."""
    values, opened, quote, current = [], [], None, ""

    def unbalanced(problem):
        return ConfigError(f"the grid entry {entry or text!r} does not balance: {problem}; close "
                           "each bracket and quote, so that the commas inside stay with their "
                           "value.")
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in CLOSING:
            opened.append(c)
        elif c in CLOSING.values():
            if not opened or CLOSING[opened[-1]] != c:
                raise unbalanced(f"{c!r} closes " + (f"a {opened[-1]!r}" if opened else
                                                     "no bracket"))
            opened.pop()
        elif c == "," and not opened:
            values.append(current)
            current = ""
            continue
        current += c
    if quote or opened:
        raise unbalanced(f"the quote {quote} is never closed" if quote else
                         f"{opened[-1]!r} is never closed")
    return values + [current]


def parse_grid(words):
    """["lr=0.1,0.01", "r=1,2"] -> [("lr", ["0.1", "0.01"]), ("r", ["1", "2"])]."""
    grid = []
    for word in words:
        name, sep, values = word.partition("=")
        if not sep or not name:
            raise ConfigError(f"{word!r} is not a field=value1,value2,... entry of the grid.")
        if name == "seed" or name in overrides.fields(["checkpoint"]):  # the folders
            raise ConfigError(f"the grid may not set {name}: the sweep sets it for every run "
                              "(seeds with --seeds, folders with --out).")
        if name in (n for n, _ in grid):
            raise ConfigError(f"{name} appears twice in the grid; give all its values in one "
                              f"entry, {name}=a,b,c.")
        grid.append((name, split_values(values, word)))
    return grid


def load_args(script):
    """The ``args`` class of a training script, without running it."""
    if not os.path.isfile(script):
        raise ConfigError(f"{script} is not a file; give a training script, e.g. train_digits.py.")
    spec = importlib.util.spec_from_file_location("_sweep_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the scripts only define args; main runs under __main__
    if not hasattr(module, "args"):
        raise ConfigError(f"{script} defines no args class; give a train_<dataset>.py script.")
    return module.args


class Run:
    """One combination and seed: its overrides, folders and state."""

    def __init__(self, name, texts, cfg):
        self.name, self.texts, self.cfg = name, texts, cfg
        self.status, self.error, self.gpus = "pending", None, None

    def state(self):
        """What sweep.json keeps of the run."""
        return {"name": self.name, "overrides": self.texts, "checkpoint": self.cfg.checkpoint,
                "savepoint": self.cfg.savepoint, "status": self.status, "error": self.error,
                **({"gpus": self.gpus} if self.gpus is not None else {})}

    def finished_sessions(self):
        """How many sessions have their record, counting from 0 without a gap."""
        t = 0
        while os.path.exists(files.session_record(self.cfg.checkpoint, t)):
            t += 1
        return t

    def done(self):
        return self.finished_sessions() >= self.cfg.num_task


def unfinished(runs):
    """The runs still to run; the others are marked finished (a rerun skips them)."""
    todo = []
    for run in runs:
        if run.done():
            run.status = "finished"
        else:
            todo.append(run)
    return todo


def plan(script, grid, seeds, out):
    """Every run of the sweep, checked as the script would check it, before any starts."""
    args = load_args(script)
    runs = []
    for values in itertools.product(*(v for _, v in grid)):
        texts = [f"{name}={value}" for (name, _), value in zip(grid, values)]
        try:
            changed = _changed(args, texts)
            for seed in seeds:
                name = ",".join((changed or ["default"]) + [f"seed={seed}"])
                name = re.sub(r"[^\w=,.+-]", "_", name)
                full = texts + [f"seed={seed}", f"checkpoint={os.path.join(out, name)}"]
                runs.append(Run(name, full, check_args(overrides.apply(args, full)[0])))
        except ConfigError as e:
            raise ConfigError(f"the combination {' '.join(texts) or '(none)'}: {e}") from None
    unique = {}
    for run in runs:  # e.g. r=1 given alongside the script's own r = 1: one run, not two
        unique.setdefault(run.name, run)
    return list(unique.values())


def _changed(args, texts):
    """The overrides that change the run, as name=value words: those without which its checked
    args would differ (``r=1`` in a script of r = 1 changes nothing, nor does ``task_start=base``
    under the paper variant, but ``task_start=base`` under ``variant=official`` does)."""
    def checked(words):
        try:
            return vars(check_args(overrides.apply(args, words)[0]))
        except ConfigError:  # e.g. num_task=2 is needed by num_class=4: it changes the run
            return None
    full = checked(texts)
    return [text for i, text in enumerate(texts) if checked(texts[:i] + texts[i + 1:]) != full]
