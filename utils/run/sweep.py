"""``python3 -m utils.run.sweep train_X.py --seeds 0-9 field=v1,v2 field2=a,b ... [--jobs N] [--out DIR]``

Runs every combination of the given values, for every seed, each as its own run of the script with
those values as command-line overrides (``utils/run/overrides.py``), in its own folders:
``<out>/<name>`` for the results and, by the overrides' rule, ``models/…/<name>`` for the weights.
A run's name lists the values that change it from the script's own ``args`` and its seed
(``variant=official,seed=3``; ``default,seed=3`` when none does), so two grids that share a setting
share its runs.

Rerunning the same command skips finished runs and resumes unfinished ones at their first missing
session, so a killed sweep loses only the runs in flight; a run that fails is recorded with its
one-sentence error and the sweep goes on. ``--jobs N`` runs N at a time, each pinned to its own share
of the cores with as many threads. At the end (and in ``<out>/sweep.json`` all along) the sweep
says what became of every run, and writes the pooled report of its runs (``utils/report/``) to
``<out>/report``.
"""
import argparse
import contextlib
import ctypes
import importlib.util
import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading

from tqdm import tqdm

from utils.config import check_args
from utils.errors import ConfigError
from utils import files
from utils.files import write_json
from utils.run import overrides

STATE = "sweep.json"


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


def split_values(text):
    """A grid entry's values: commas separate them, except inside brackets or quotes
    (``schedule=[4,8],[2]`` is two values)."""
    values, depth, quote, current = [], 0, None, ""
    for c in text:
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += c
    return values + [current]


def parse_grid(words):
    """["lr=0.1,0.01", "r=1,2"] -> [("lr", ["0.1", "0.01"]), ("r", ["1", "2"])]."""
    grid = []
    for word in words:
        name, sep, values = word.partition("=")
        if not sep or not name:
            raise ConfigError(f"{word!r} is not a field=value1,value2,... entry of the grid.")
        if name in ("seed", "checkpoint", "savepoint"):
            raise ConfigError(f"the grid may not set {name}: the sweep sets it for every run "
                              "(seeds with --seeds, folders with --out).")
        if name in (n for n, _ in grid):
            raise ConfigError(f"{name} appears twice in the grid; give all its values in one "
                              f"entry, {name}=a,b,c.")
        grid.append((name, split_values(values)))
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
        self.status, self.error = "pending", None

    def finished_sessions(self):
        """How many sessions have their record, counting from 0 without a gap."""
        t = 0
        while os.path.exists(files.session_record(self.cfg.checkpoint, t)):
            t += 1
        return t

    def done(self):
        return self.finished_sessions() >= self.cfg.num_task


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


def core_sets(jobs):
    """Each job's cores: the cores this process may use, split into ``jobs`` equal parts."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    share = max(1, len(cores) // jobs)
    return [cores[(i * share) % len(cores):][:share] for i in range(jobs)]


def _child_setup(cores):
    """In the run's process: its cores, and death with the sweep (a killed sweep leaves no run
    going on without it, holding its folder's lock)."""
    def setup():
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    return setup


def launch(run, script, cores, log_path):
    """Start ``run`` from its first missing session; returns the process."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    threads = str(len(cores))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    log = open(log_path, "a", encoding="utf-8")
    start = run.finished_sessions()
    command = [sys.executable, script, str(start)] + run.texts
    log.write(f"$ {overrides.command(script, start, run.texts)}\n")
    log.flush()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_child_setup(cores), stdin=subprocess.DEVNULL)


def last_error(log_path):
    """The run's one-sentence error (its last "error: …" line), or its last line."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["(no output)"])[-1]


def execute(runs, script, jobs, out, state):
    """Run what is unfinished, ``jobs`` at a time, keeping ``state`` (sweep.json) current."""
    todo = [run for run in runs if not run.done()]
    for run in runs:
        if run.done():
            run.status = "finished"
    free = queue.Queue()
    for cores in core_sets(jobs):
        free.put(cores)
    finished = queue.Queue()
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run")
    lock = threading.Lock()

    def work(run, cores):
        log_path = os.path.join(out, "logs", f"{run.name}.log")
        process = launch(run, script, cores, log_path)
        code = process.wait()
        with lock:
            run.status = "finished" if code == 0 and run.done() else "failed"
            run.error = None if run.status == "finished" else \
                f"exit status {code}: {last_error(log_path)}"
        free.put(cores)
        finished.put(run)

    threads = []
    for run in todo:
        cores = free.get()
        run.status = "running"
        thread = threading.Thread(target=work, args=(run, cores), daemon=True)
        thread.start()
        threads.append(thread)
        _drain(finished, bar, runs, state)
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
            _drain(finished, bar, runs, state)
    _drain(finished, bar, runs, state)
    bar.close()


def _drain(finished, bar, runs, state):
    """Count the runs that ended since the last call and save the sweep's state."""
    changed = False
    while not finished.empty():
        run = finished.get()
        bar.update(1)
        if run.status == "failed":
            tqdm.write(f"{run.name} failed ({run.error}); the sweep goes on")
        changed = True
    if changed:
        state(runs)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m utils.run.sweep", description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("script", help="the training script, e.g. train_digits.py")
    parser.add_argument("grid", nargs="*", help="field=value1,value2,... (values with commas "
                        "inside brackets stay one value)")
    parser.add_argument("--seeds", default="0", help="e.g. 0-9 or 0,3,7 (default: 0)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--out", help="results folder of the sweep (default: "
                        "results/sweeps/<script name>)")
    options = parser.parse_intermixed_args(argv)  # the grid may come after the options
    stem = os.path.splitext(os.path.basename(options.script))[0]
    out = options.out or os.path.join("results", "sweeps", stem)
    try:
        if options.jobs < 1:
            raise ConfigError(f"--jobs {options.jobs} must be at least 1.")
        runs = plan(options.script, parse_grid(options.grid), parse_seeds(options.seeds), out)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    command = " ".join(["python3 -m utils.run.sweep"] + (argv if argv is not None else sys.argv[1:]))

    def state(runs_now):
        write_json(os.path.join(out, STATE), {
            "command": command, "script": options.script, "out": out,
            "runs": [{"name": r.name, "overrides": r.texts, "checkpoint": r.cfg.checkpoint,
                      "savepoint": r.cfg.savepoint, "status": r.status, "error": r.error}
                     for r in runs_now]})

    try:
        execute(runs, options.script, options.jobs, out, state)
    except KeyboardInterrupt:  # the runs in flight got the Ctrl-C too and stopped at their session
        state(runs)
        sys.stderr.write(f"interrupted; rerun `{command}` to finish the sweep: finished runs are "
                         "skipped and unfinished ones resumed.\n")
        sys.exit(130)
    state(runs)
    failed = [run for run in runs if run.status != "finished"]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs finished"
          + (f"; failed: {', '.join(r.name for r in failed)} (errors in {out}/{STATE})"
             if failed else ""))
    summarise(runs, out)
    if failed:
        sys.exit(1)


def summarise(runs, out):
    """The pooled report of the sweep's finished runs, into <out>/report."""
    from utils.report.tables import format_pooled, pooled_report
    folders = [run.cfg.checkpoint for run in runs if run.status == "finished"]
    if not folders:
        return
    table = pooled_report(folders, os.path.join(out, "report"))
    print(format_pooled(table))
    print(f"pooled report: {os.path.join(out, 'report', files.REPORT_MD)}")


if __name__ == "__main__":
    main()
