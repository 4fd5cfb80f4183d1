"""``--slurm``: a sweep's unfinished runs submitted to Slurm as one job array, one array task a run.

Each submission writes, under ``<out>/slurm/``, the list of its runs (``array-<stamp>.json``) and the
batch script it gave ``sbatch`` (``array-<stamp>.sh``, to read or resubmit by hand). Array task i
runs ``python3 -m utils.run.sweep.task <list> i``: run i of the list from its first missing session,
its output in ``<out>/logs/<name>.log`` as on this machine, then a status file
``<out>/slurm/status/<name>.json``. Submitting again skips finished runs and resumes the others, as
the local sweep does; it is refused while an earlier array of the same sweep is still queued or
running, since two tasks would then train one run.

Why ``sbatch`` and not submitit: our runs are already command lines (a script and its overrides),
which is what a job array runs; ``sbatch`` needs nothing installed beyond Slurm's own clients, and
the batch script it was given stays in the sweep's folder for anyone to read, while submitit would
pickle Python callables into the shared file system and add a dependency.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from tqdm import tqdm

from utils.errors import ConfigError
from utils.files import write_json, write_text
from utils.run.sweep.plan import unfinished

POLL_SECONDS = 2.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def status_file(out, name):
    return os.path.join(out, "slurm", "status", f"{name}.json")


def _slurm(*argv):
    """A Slurm client command's output; one sentence if it is missing or fails."""
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"{argv[0]} is not on PATH; --slurm needs a Slurm cluster's client "
                          "commands (sbatch, squeue) on the machine that submits.")
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ConfigError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def active(job_ids):
    """The array jobs among ``job_ids`` that still have a task queued or running."""
    if not job_ids:
        return []
    listed = _slurm("squeue", "-h", "-o", "%F", "-j", ",".join(job_ids)).split()
    return sorted({job for job in listed if job in job_ids})


def batch_script(array_file, count, options, cwd):
    """The sbatch script of one submission (Slurm reads the #SBATCH lines)."""
    name = os.path.basename(array_file)[:-len(".json")]
    logs = os.path.join(os.path.dirname(os.path.dirname(array_file)), "logs")
    throttle = f"%{options.jobs}" if options.jobs else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=itaml-{name}",
             f"#SBATCH --array=0-{count - 1}{throttle}",
             f"#SBATCH --output={os.path.join(logs, 'slurm-%A_%a.out')}"]
    if options.cpus_per_job:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_job}")
    if options.gpus_per_job:
        lines.append(f"#SBATCH --gres=gpu:{options.gpus_per_job}")
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.time:
        lines.append(f"#SBATCH --time={options.time}")
    lines += [f"cd {shlex.quote(cwd)}",
              f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}",
              f"exec {shlex.quote(sys.executable)} -m utils.run.sweep.task "
              f"{shlex.quote(array_file)} \"$SLURM_ARRAY_TASK_ID\""]
    return "\n".join(lines) + "\n"


def submit(runs, script, out, options, earlier_jobs):
    """Submit the unfinished runs as one array; returns (job id, the runs submitted). Nothing is
    submitted when every run has finished."""
    busy = active(earlier_jobs)
    if busy:
        raise ConfigError(f"job {', '.join(busy)} of this sweep is still queued or running; wait "
                          f"for it or cancel it (`scancel {' '.join(busy)}`), then submit again.")
    todo = unfinished(runs)
    if not todo:
        return None, []
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    array_file = os.path.abspath(os.path.join(out, "slurm", f"array-{stamp}.json"))
    write_json(array_file, {"script": os.path.abspath(script), "out": os.path.abspath(out),
                            "gpus_per_job": options.gpus_per_job,
                            "runs": [{"name": r.name, "overrides": r.texts,
                                      "checkpoint": os.path.abspath(r.cfg.checkpoint),
                                      "num_task": r.cfg.num_task} for r in todo]})
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)  # Slurm opens its output files there
    batch = array_file[:-len(".json")] + ".sh"
    write_text(batch, batch_script(array_file, len(todo), options, os.getcwd()))
    job = _slurm("sbatch", "--parsable", *shlex.split(options.sbatch or ""), batch)
    job = job.strip().split(";")[0]
    for i, run in enumerate(todo):
        run.status, run.error, run.slurm = "submitted", None, f"{job}_{i}"
    return job, todo


def wait(job, todo, runs, out, state):
    """One progress bar over the array until none of its tasks is queued or running; then each
    submitted run's outcome, a failed one with its run's sentence."""
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"slurm job {job}",
               unit="run")
    seen = set()
    while True:
        still = active([job])
        for run in todo:
            outcome = _outcome(out, run, job)
            if outcome and run.name not in seen:
                seen.add(run.name)
                run.status, run.error = outcome
                bar.update(1)
                if run.status == "failed":
                    tqdm.write(f"{run.name} failed ({run.error}); the sweep goes on")
                state(runs)
        if not still:
            break
        time.sleep(POLL_SECONDS)
    bar.close()
    for run in todo:
        if run.name not in seen:  # the task ended without writing its status
            run.status = "failed"
            run.error = (f"array task {run.slurm} ended without a status (cancelled, out of time "
                         f"or killed); see {os.path.join(out, 'logs', f'slurm-{run.slurm}.out')}")
    state(runs)


def _outcome(out, run, job):
    """(status, error) from the run's status file if this array's task wrote it, else None."""
    path = status_file(out, run.name)
    try:
        with open(path) as f:
            status = json.load(f)
    except (OSError, ValueError):
        return None
    if status.get("job") != job:
        return None  # a status left by an earlier submission
    return status["status"], status.get("error")
