"""``python3 -m utils.run.sweep.task LIST INDEX``: what one Slurm array task runs (``slurm.py``).

Run ``INDEX`` of the submission's list, from its first missing session (decided now, not when the
array was submitted), with Slurm's CPUs and GPUs; then its status file: "finished", or "failed" with
its run's one-sentence error.
"""
import json
import os
import sys
from types import SimpleNamespace

from utils.files import write_json
from utils.run.sweep.local import last_error, launch, log_file
from utils.run.sweep.plan import Run
from utils.run.sweep.slurm import status_file


def main(argv=None):
    array_file, index = (argv if argv is not None else sys.argv[1:])[:2]
    with open(array_file) as f:
        array = json.load(f)
    entry = array["runs"][int(index)]
    run = Run(entry["name"], entry["overrides"],
              SimpleNamespace(checkpoint=entry["checkpoint"], num_task=entry["num_task"]))
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in listed.split(",") if g] if array["gpus_per_job"] and listed else None
    slot = (list(range(int(cpus))) if cpus else None, gpus)
    out = array["out"]
    code = launch(run, array["script"], slot, log_file(out, run), pin=False).wait()
    finished = code == 0 and run.done()
    write_json(status_file(out, run.name), {
        "status": "finished" if finished else "failed", "exit": code,
        "error": None if finished else f"exit status {code}: {last_error(log_file(out, run))}",
        "job": os.environ.get("SLURM_ARRAY_JOB_ID")})
    sys.exit(0 if finished else 1)


if __name__ == "__main__":
    main()
