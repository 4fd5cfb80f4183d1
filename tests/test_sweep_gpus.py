"""A sweep on a machine with GPUs: every job its own GPUs, through CUDA_VISIBLE_DEVICES, from a pool
of free slots. Checked on the CPU: the GPUs are made up (``visible_gpus``), and each child's
environment is read back from what its run recorded (the manifest keeps CUDA_VISIBLE_DEVICES)."""
import json
import os
import warnings

import pytest

from utils.errors import ConfigError
from utils.run.sweep import local
from utils.run.sweep.__main__ import main as sweep_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_digits.py")
TINY = ["num_class=4", "num_task=2", "epochs=1", "schedule=[]", "memory=20", "device=cpu"]


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


@pytest.mark.parametrize("jobs,k,gpus,want", [
    (2, None, ["0", "1", "2", "3"], [["0"], ["1"]]),
    (2, 2, ["0", "1", "2", "3"], [["0", "1"], ["2", "3"]]),
    (1, 3, ["4", "5", "7"], [["4", "5", "7"]]),       # CUDA_VISIBLE_DEVICES names, as given
    (3, None, [], [None, None, None]),                  # no GPU: the runs share the cores only
])
def test_every_job_slot_owns_its_gpus(two_cores, jobs, k, gpus, want):
    made = local.slots(jobs, k, gpus)
    assert [g for _, g in made] == want
    assert [c for c, _ in made] == local.core_sets(jobs)  # and its share of the cores
    given = [g for _, slot in made if slot for g in slot]
    assert len(given) == len(set(given))  # no GPU in two slots


@pytest.mark.parametrize("jobs,k,gpus,pattern", [
    (4, 1, ["0", "1"], r"^--jobs 4 × --gpus-per-job 1 needs 4 GPUs but 2 are visible \(0, 1\); "
                       r"lower --jobs to 2 or --gpus-per-job\.$"),
    (2, 3, ["0", "1", "2", "3"], r"needs 6 GPUs but 4 are visible .*lower --jobs to 1"),
    (1, 1, [], r"^--gpus-per-job 1 but no GPU is visible \(check CUDA_VISIBLE_DEVICES\); leave it "
               r"out to run on the CPU cores\.$"),
])
def test_more_gpus_than_visible_is_one_sentence(jobs, k, gpus, pattern):
    with pytest.raises(ConfigError, match=pattern):
        local.slots(jobs, k, gpus)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local.visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert local.visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert local.visible_gpus() == []


def test_each_run_gets_its_own_gpu_and_gives_it_back(tmp_path, monkeypatch, capsys):
    """Four runs, two jobs, four visible GPUs, one a job: every run sees exactly one GPU through
    CUDA_VISIBLE_DEVICES, only the two slots' GPUs are used, and with the machine's CPU each run
    still resolves device "cpu"; sweep.json says which run had which GPU."""
    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1", "2", "3"])
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as done:
        sweep_main([SCRIPT, "--seeds", "0-1", "--jobs", "2", "--out", str(out), "lr=0.1,0.05",
                    *TINY])
        raise SystemExit(0)
    assert done.value.code == 0, capsys.readouterr().err
    state = json.load(open(out / "sweep.json"))
    assert len(state["runs"]) == 4
    for run in state["runs"]:
        manifest = json.load(open(os.path.join(run["checkpoint"], "manifest.json")))
        seen = manifest["device"]["cuda_visible_devices"]
        assert seen in ("0", "1") and run["gpus"] == [seen]
        assert manifest["device"]["name"] == "cpu"
    assert {run["gpus"][0] for run in state["runs"]} == {"0", "1"}


# Where torch.distributed itself fails to connect the ranks (a refused or reset socket while
# torchrun's agent holds its rendezvous, or while the ranks join the gloo group: the sentence of
# utils.fast.distributed.setup), before any line of ours runs between them. Only such a failure earns
# the launch a second try: a failure anywhere else fails the test with the run's log.
CONNECT_FAILURES = ("could not join the gloo process group", "torch/distributed/elastic/rendezvous")


def test_several_gpus_a_run_start_it_under_torchrun(tmp_path, monkeypatch, capsys):
    """--gpus-per-job 2: the run is launched by torchrun, one process a GPU (two gloo ranks on
    the CPU here), and finishes."""
    monkeypatch.setattr(local, "visible_gpus", lambda: ["0", "1"])
    out = tmp_path / "sweep"

    def sweep():
        with pytest.raises(SystemExit) as done:
            sweep_main([SCRIPT, "--seeds", "0", "--jobs", "1", "--gpus-per-job", "2", "--out",
                        str(out), *TINY, "train_batch=16"])
            raise SystemExit(0)
        run = json.load(open(out / "sweep.json"))["runs"][0]
        return done.value.code, run, open(out / "logs" / f"{run['name']}.log").read()
    code, run, log = sweep()
    if code != 0 and any(mark in log for mark in CONNECT_FAILURES):
        warnings.warn(f"torchrun's ranks failed to connect; the sweep is run again:\n{log}")
        code, run, log = sweep()  # the sweep resumes the run from its first missing session
    assert code == 0, f"{capsys.readouterr().err}\nthe run's log:\n{log}"
    assert log.splitlines()[0].startswith("$ torchrun --standalone --nproc_per_node=2 ")
    assert run["status"] == "finished" and run["gpus"] == ["0", "1"]
    record = json.load(open(os.path.join(run["checkpoint"], "session_1.json")))
    assert record["world_size"] == 2
    manifest = json.load(open(os.path.join(run["checkpoint"], "manifest.json")))
    assert manifest["device"]["cuda_visible_devices"] == "0,1"


def test_slurm_options_need_slurm(capsys):
    with pytest.raises(SystemExit) as stop:
        sweep_main([SCRIPT, "--partition", "gpu", *TINY])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: --partition goes with --slurm; add --slurm or "
                                       "leave it out.\n")
