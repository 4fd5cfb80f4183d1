"""A sweep's runs on this machine, ``--jobs`` at a time.

Each job slot owns a share of the CPU cores (the run is pinned to them, with as many threads) and,
where GPUs are visible, its own ``--gpus-per-job`` of them, handed to the run through
``CUDA_VISIBLE_DEVICES``: a slot's GPUs go back to the pool when its run ends, so no two runs ever
share a GPU. A run given several GPUs is started under torchrun, one process a GPU. Runs die with the
sweep, so a killed sweep leaves no run going on without it, holding its folder's lock.
"""
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading

from tqdm import tqdm

from utils.errors import ConfigError
from utils.run import overrides
from utils.run.sweep.plan import unfinished


def visible_gpus():
    """The GPUs this process may hand out, named as ``CUDA_VISIBLE_DEVICES`` names them (their
    indices when it is unset); none where torch sees no GPU."""
    import torch
    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def core_sets(jobs):
    """Each job's cores: the cores this process may use, split into ``jobs`` equal parts."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    share = max(1, len(cores) // jobs)
    return [cores[(i * share) % len(cores):][:share] for i in range(jobs)]


def slots(jobs, gpus_per_job=None, gpus=None):
    """Each job slot: (its cores, its GPUs or None). Without visible GPUs the runs share none;
    with them every slot gets ``gpus_per_job`` (default 1) of its own. Refused with one sentence
    when the slots would need more GPUs than are visible, or GPUs are asked for and none is."""
    gpus = visible_gpus() if gpus is None else gpus
    if not gpus:
        if gpus_per_job:
            raise ConfigError(f"--gpus-per-job {gpus_per_job} but no GPU is visible (check "
                              "CUDA_VISIBLE_DEVICES); leave it out to run on the CPU cores.")
        return [(cores, None) for cores in core_sets(jobs)]
    k = gpus_per_job or 1
    if jobs * k > len(gpus):
        raise ConfigError(f"--jobs {jobs} × --gpus-per-job {k} needs {jobs * k} GPUs but "
                          f"{len(gpus)} are visible ({', '.join(gpus)}); lower --jobs to "
                          f"{max(1, len(gpus) // k)} or --gpus-per-job.")
    return [(cores, gpus[i * k:(i + 1) * k]) for i, cores in enumerate(core_sets(jobs))]


def _child_setup(cores):
    """In the run's process: its cores, and death with the sweep."""
    def setup():
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    return setup


def command_of(run, script, gpus=None):
    """The run's command line from its first missing session: the script, or with several GPUs
    torchrun starting one process a GPU; and the same as the shell words its log shows."""
    start = run.finished_sessions()
    words = [script, str(start)] + run.texts
    if gpus and len(gpus) > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(gpus)}"]
        return [sys.executable] + launcher + words, "torchrun " + " ".join(launcher[2:]) + " " + \
            overrides.command(script, start, run.texts).removeprefix("python3 ")
    return [sys.executable] + words, overrides.command(script, start, run.texts)


def launch(run, script, slot, log_path, pin=True):
    """Start ``run`` in ``slot`` (cores, GPUs) from its first missing session; returns the process.
    ``pin`` False leaves the cores to whoever gave them (a Slurm task)."""
    cores, gpus = slot
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ)
    if cores:
        env.update(OMP_NUM_THREADS=str(len(cores)), MKL_NUM_THREADS=str(len(cores)))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    command, shown = command_of(run, script, gpus)
    log = open(log_path, "a", encoding="utf-8")
    log.write(f"$ {shown}\n")
    log.flush()
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_child_setup(cores if pin else None),
                            stdin=subprocess.DEVNULL)


def last_error(log_path):
    """The run's one-sentence error (its last "error: …" line), or its last line."""
    if not os.path.exists(log_path):
        return "(no log)"
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["(no output)"])[-1]


def log_file(out, run):
    return os.path.join(out, "logs", f"{run.name}.log")


def execute(runs, script, job_slots, out, state):
    """Run what is unfinished, one run a slot at a time, keeping ``state`` (sweep.json) current."""
    todo = unfinished(runs)
    free = queue.Queue()
    for slot in job_slots:
        free.put(slot)
    finished = queue.Queue()
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run")
    lock = threading.Lock()

    def work(run, slot):
        process = launch(run, script, slot, log_file(out, run))
        code = process.wait()
        with lock:
            run.status = "finished" if code == 0 and run.done() else "failed"
            run.error = None if run.status == "finished" else \
                f"exit status {code}: {last_error(log_file(out, run))}"
        free.put(slot)
        finished.put(run)

    threads = []
    for run in todo:
        slot = free.get()
        run.status, run.gpus = "running", slot[1]
        thread = threading.Thread(target=work, args=(run, slot), daemon=True)
        thread.start()
        threads.append(thread)
        drain(finished, bar, runs, state)
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
            drain(finished, bar, runs, state)
    drain(finished, bar, runs, state)
    bar.close()


def drain(finished, bar, runs, state):
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
