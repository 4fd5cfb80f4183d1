"""``python3 -m utils.run.sweep train_X.py --seeds 0-9 field=v1,v2 ... [--jobs N] [--out DIR]
[--gpus-per-job K] [--slurm [--partition P] [--time T] [--cpus-per-job C] [--sbatch "..."] [--no-wait]]``

Runs every combination of the given values, for every seed, each as its own run of the script with
those values as command-line overrides (``utils/run/overrides.py``), in its own folders:
``<out>/<name>`` for the results and, by the overrides' rule, ``models/…/<name>`` for the weights.
A run's name lists the values that change it from the script's own ``args`` and its seed
(``variant=official,seed=3``; ``default,seed=3`` when none does), so two grids that share a setting
share its runs.

Rerunning the same command skips finished runs and resumes unfinished ones at their first missing
session, so a killed sweep loses only the runs in flight; a run that fails is recorded with its
one-sentence error and the sweep goes on. On this machine ``--jobs N`` runs N at a time, each pinned
to its share of the cores and, where GPUs are visible, given its own ``--gpus-per-job`` GPUs
(``local.py``). With ``--slurm`` the unfinished runs go to Slurm as one job array (``slurm.py``;
``--jobs`` then caps how many run at once). At the end (and in ``<out>/sweep.json`` all along) the
sweep says what became of every run, and writes the pooled report of its runs (``utils/report/``)
to ``<out>/report``.
"""
import argparse
import json
import os
import sys

from utils import files
from utils.errors import ConfigError
from utils.files import write_json
from utils.run.sweep import local, slurm
from utils.run.sweep.plan import parse_grid, parse_seeds, plan

STATE = "sweep.json"
SLURM_ONLY = ("partition", "time", "cpus_per_job", "sbatch", "no_wait")


def arguments():
    parser = argparse.ArgumentParser(
        prog="python3 -m utils.run.sweep", description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("script", help="the training script, e.g. train_digits.py")
    parser.add_argument("grid", nargs="*", help="field=value1,value2,... (a comma inside [], (), {} "
                        "or quotes stays in its value)")
    parser.add_argument("--seeds", default="0", help="e.g. 0-9 or 0,3,7 (default: 0)")
    parser.add_argument("--jobs", type=int, help="runs at a time (default: 1 here; with --slurm "
                        "as many as Slurm starts)")
    parser.add_argument("--out", help="results folder of the sweep (default: "
                        "results/sweeps/<script name>)")
    parser.add_argument("--gpus-per-job", type=int, help="GPUs each run gets (default: 1 where "
                        "GPUs are visible, none elsewhere); several: the run starts under torchrun")
    slurm_options = parser.add_argument_group("Slurm")
    slurm_options.add_argument("--slurm", action="store_true",
                               help="submit the unfinished runs to Slurm as one job array")
    slurm_options.add_argument("--partition", help="sbatch --partition")
    slurm_options.add_argument("--time", help="sbatch --time of each run, e.g. 12:00:00")
    slurm_options.add_argument("--cpus-per-job", type=int, help="sbatch --cpus-per-task")
    slurm_options.add_argument("--sbatch", help='more sbatch options, e.g. "--account=abc --qos=x"')
    slurm_options.add_argument("--no-wait", action="store_true", help="submit, print the job id "
                               "and the report command, and return")
    return parser


def check(options):
    for name in ("jobs", "gpus_per_job", "cpus_per_job"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value} must be at least 1.")
    if not options.slurm:
        given = [name for name in SLURM_ONLY if getattr(options, name)]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} goes with --slurm; add --slurm or "
                              "leave it out.")


def main(argv=None):
    options = arguments().parse_intermixed_args(argv)  # the grid may come after the options
    stem = os.path.splitext(os.path.basename(options.script))[0]
    out = options.out or os.path.join("results", "sweeps", stem)
    command = " ".join(["python3 -m utils.run.sweep"] + (argv if argv is not None else sys.argv[1:]))
    try:
        check(options)
        runs = plan(options.script, parse_grid(options.grid), parse_seeds(options.seeds), out)
        job_slots = None if options.slurm else local.slots(options.jobs or 1, options.gpus_per_job)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    jobs = earlier_jobs(out)

    def state(runs_now):
        write_json(os.path.join(out, STATE), {
            "command": command, "script": options.script, "out": out, "slurm_jobs": jobs,
            "runs": [run.state() for run in runs_now]})

    try:
        if options.slurm:
            if not submitted(runs, options, out, jobs, state):
                return
        else:
            local.execute(runs, options.script, job_slots, out, state)
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:  # the runs in flight got the Ctrl-C too and stopped at their session
        state(runs)
        sys.stderr.write(f"interrupted; rerun `{command}` to finish the sweep: finished runs are "
                         "skipped and unfinished ones resumed.\n")
        sys.exit(130)
    finish(runs, out, state)


def submitted(runs, options, out, jobs, state):
    """Submit to Slurm and, unless --no-wait, wait for the array; False when there is nothing more
    to do here (--no-wait)."""
    job, todo = slurm.submit(runs, options.script, out, options, jobs)
    if job is not None:
        jobs.append(job)
        state(runs)
        print(f"submitted {len(todo)} run(s) as Slurm job array {job}")
    if options.no_wait:
        folders = " ".join(run.cfg.checkpoint for run in runs)
        print(f"when it has finished: python3 -m utils.report {folders} --out "
              f"{os.path.join(out, 'report')}")
        return False
    if job is not None:
        slurm.wait(job, todo, runs, out, state)
    return True


def finish(runs, out, state):
    state(runs)
    failed = [run for run in runs if run.status != "finished"]
    print(f"{len(runs) - len(failed)} of {len(runs)} runs finished"
          + (f"; failed: {', '.join(r.name for r in failed)} (errors in {out}/{STATE})"
             if failed else ""))
    summarise(runs, out)
    if failed:
        sys.exit(1)


def earlier_jobs(out):
    """The Slurm arrays earlier submissions of this sweep recorded."""
    try:
        with open(os.path.join(out, STATE)) as f:
            return list(json.load(f).get("slurm_jobs") or [])
    except (OSError, ValueError):
        return []


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
