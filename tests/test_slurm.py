"""``python3 -m utils.run.sweep ... --slurm`` against a real single-node Slurm started for these tests.

The fixture starts Debian's slurm-wlm on this machine, as root, in a folder of its own: ``munged``
with a fresh key (authentication: ``AuthType=auth/munge`` through that daemon's socket), then
``slurmctld`` and ``slurmd`` on free ports, one node with this machine's CPUs, one partition. Process
tracking is ``proctrack/linuxproc`` (Slurm follows a task's processes by their parent ids, no
cgroups needed) and ``task/none`` binds nothing. Everything stops when the tests end. Where Slurm is
not installed, or cannot be started here, the tests are skipped with one line saying why
(``.ci/run`` installs it).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from utils.files import finished_sessions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_digits.py")
TINY = ["num_class=4", "num_task=2", "schedule=[]", "memory=20", "device=cpu"]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _why_not():
    missing = [d for d in DAEMONS if shutil.which(d) is None and
               not os.path.exists(os.path.join("/usr/sbin", d))]
    if missing:
        return (f"Slurm is not installed here ({', '.join(missing)} missing); .ci/run installs "
                "Debian's slurm-wlm")
    if os.geteuid() != 0:
        return "starting a single-node Slurm needs root (slurmd runs jobs as their users)"
    return None


def _write_conf(folder):
    host = socket.gethostname().split(".")[0]
    conf = os.path.join(folder, "slurm.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            "ClusterName=itaml-test", f"SlurmctldHost={host}", "SlurmUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={folder}/munge.socket",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "MpiDefault=none", "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
            f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
            f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
            f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(folder, sub))
    return conf


def _daemon(path, *argv, log):
    exe = shutil.which(path) or os.path.join("/usr/sbin", path)
    return subprocess.Popen([exe, *argv], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node Slurm; yields the environment its clients need (SLURM_CONF)."""
    why = _why_not()
    if why:
        pytest.skip(why)
    folder = str(tmp_path_factory.mktemp("slurm"))
    key = os.path.join(folder, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o600)
    conf = _write_conf(folder)
    log = open(os.path.join(folder, "daemons.log"), "a")
    procs = [_daemon("munged", "-F", "--force", f"--key-file={key}",
                     f"--socket={folder}/munge.socket", f"--pid-file={folder}/munged.pid",
                     f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed",
                     log=log)]
    env = dict(os.environ, SLURM_CONF=conf)
    try:
        time.sleep(1)
        procs.append(_daemon("slurmctld", "-D", "-f", conf, log=log))
        time.sleep(1)
        procs.append(_daemon("slurmd", "-D", "-f", conf, log=log))
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                  text=True)
            state = done.stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            tail = open(os.path.join(folder, "daemons.log")).read()[-300:]
            pytest.skip(f"a single-node Slurm did not come up here (node {state or 'unknown'}): "
                        f"{tail}")
        yield env
        # no job step outlives the cluster: cancel what is left and wait for it to end
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        deadline = time.time() + 30
        while time.time() < deadline and subprocess.run(
                ["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            time.sleep(0.5)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def sweep(env, out, *more, check=True, epochs=1):
    done = subprocess.run([sys.executable, "-m", "utils.run.sweep", SCRIPT, "--slurm", "--out",
                           str(out), *TINY, f"epochs={epochs}", *more], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def state_of(out):
    with open(os.path.join(out, "sweep.json")) as f:
        return json.load(f)


def snapshot(folder):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names}


def test_a_slurm_sweep_of_the_digits_runs_to_its_pooled_report(slurm, tmp_path):
    """2 settings × 1 seed as one job array; the sweep waits with one progress bar, then writes
    the pooled report. Submitting again finds every run finished and submits nothing."""
    out = tmp_path / "sweep"
    done = sweep(slurm, out, "--seeds", "0", "variant=paper,official")
    state = state_of(out)
    assert [run["status"] for run in state["runs"]] == ["finished"] * 2
    assert "submitted 2 run(s) as Slurm job array" in done.stdout
    assert "2 of 2 runs finished" in done.stdout
    assert os.path.isfile(out / "report" / "report.csv")
    arrays = [n for n in os.listdir(out / "slurm") if n.endswith(".sh")]
    assert len(arrays) == 1 and "#SBATCH --array=0-1" in open(out / "slurm" / arrays[0]).read()
    for run in state["runs"]:
        assert finished_sessions(run["checkpoint"]) == [0, 1]
        first = open(out / "logs" / f"{run['name']}.log").readline()
        assert first.startswith("$ python3 ") and "train_digits.py 0 " in first
    again = sweep(slurm, out, "--seeds", "0", "variant=paper,official")
    assert "submitted" not in again.stdout and "2 of 2 runs finished" in again.stdout


def test_a_killed_slurm_sweep_submitted_again_skips_what_finished(slurm, tmp_path):
    """One run at a time (--jobs 1, the array's throttle), --no-wait; once the first run has
    finished the array is cancelled, killing the second mid-way. Submitted again, the finished run
    is left byte for byte as it was and only the others are submitted, resumed from their first
    missing session."""
    out = tmp_path / "sweep"
    done = sweep(slurm, out, "--seeds", "0-1", "--jobs", "1", "--no-wait", epochs=3)
    assert "python3 -m utils.report" in done.stdout
    job = state_of(out)["slurm_jobs"][-1]
    runs = state_of(out)["runs"]
    deadline = time.time() + 300
    while not finished_sessions(runs[0]["checkpoint"]) == [0, 1] and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=slurm, check=True)
    while subprocess.run(["squeue", "-h", "-j", job], env=slurm, capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.5)
    kept = snapshot(runs[0]["checkpoint"])
    unfinished = [r for r in runs if finished_sessions(r["checkpoint"]) != [0, 1]]
    assert unfinished, "every run finished before the cancel; the test would prove nothing"
    again = sweep(slurm, out, "--seeds", "0-1", "--jobs", "1", epochs=3)
    assert f"submitted {len(unfinished)} run(s)" in again.stdout
    assert snapshot(runs[0]["checkpoint"]) == kept
    assert all(r["status"] == "finished" for r in state_of(out)["runs"])
    assert os.path.isfile(out / "report" / "report.csv")


def test_a_failed_array_task_is_reported_with_its_runs_sentence(slurm, tmp_path):
    out = tmp_path / "sweep"
    done = sweep(slurm, out, "lr=0.1,1e6", check=False)
    assert done.returncode == 1
    failed = [r for r in state_of(out)["runs"] if r["status"] == "failed"]
    assert len(failed) == 1 and "lr=1e6" in failed[0]["name"]
    assert "session 0 diverged: the training loss became non-finite" in failed[0]["error"]
    assert "1 of 2 runs finished" in done.stdout


def test_submitting_while_the_sweeps_array_runs_is_refused(slurm, tmp_path):
    out = tmp_path / "sweep"
    sweep(slurm, out, "--seeds", "0-1", "--jobs", "1", "--no-wait")
    job = state_of(out)["slurm_jobs"][-1]
    busy = sweep(slurm, out, "--seeds", "0-1", "--jobs", "1", check=False)
    subprocess.run(["scancel", job], env=slurm)
    assert busy.returncode == 2
    assert busy.stderr.strip() == (f"error: job {job} of this sweep is still queued or running; "
                                   f"wait for it or cancel it (`scancel {job}`), then submit again.")
