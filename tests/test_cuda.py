"""The GPU path: the CUDA meta-step against the CPU one, the speed options on CIFAR-format data, a
one-GPU torchrun (NCCL) run and a resume on the GPU. Skipped where no GPU is visible; run on a GPU
machine by ``benchmarks/gpu_check.sh``."""
import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import learner_task_itaml as L
import train_cifar
import train_digits
from resnet import ReducedResNet18
from tests.support import fake_data as F
from utils.run.session import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU is visible; benchmarks/gpu_check.sh runs these "
                                       "on a GPU machine")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPT, TASKS = 2, 3


@pytest.fixture
def exact_float32(monkeypatch):
    """TF32 rounds convolution and matrix inputs to 10 bits of mantissa; the comparison with the
    CPU wants float32 throughout."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 4, 5, 4, 0, 5, 1, 4, 4, 5, 0])  # tasks 0 and 2 (task 1 absent)
    return x, y


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_the_cuda_meta_step_equals_the_cpu_one(cfg_factory, exact_float32, variant):
    cfg = cfg_factory(variant=variant, r=2, optimizer="radam", lr=0.01, weight_decay=1e-3,
                      beta=1.0, num_class=CPT * TASKS, class_per_task=CPT, num_task=TASKS)
    torch.manual_seed(0)
    start = ReducedResNet18((3, 8, 8), CPT * TASKS)
    models = {"cpu": copy.deepcopy(start), "cuda": copy.deepcopy(start).cuda()}
    for device, model in models.items():
        learner = L.MetaLearner(model, cfg, session=2, device=device)
        for seed in (0, 1):
            learner.meta_step(*batch(seed))
        learner.finish()
    cpu = dict(models["cpu"].state_dict())
    moved = 0.0
    for name, value in models["cuda"].state_dict().items():
        torch.testing.assert_close(value.cpu(), cpu[name], rtol=1e-4, atol=1e-5, msg=name)
        if value.is_floating_point():
            moved = max(moved, (cpu[name] - start.state_dict()[name]).abs().max().item())
    assert moved > 1e-3  # the steps did move the weights


def digits_words(folder, *more):
    return ["num_class=4", "num_task=2", "epochs=2", "schedule=[]", "memory=20", "device=cuda",
            f"checkpoint={folder}/results", f"savepoint={folder}/models", *more]


def test_a_one_gpu_torchrun_run_finishes(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         os.path.join(ROOT, "train_digits.py"), "0", *digits_words(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.load(open(tmp_path / "results" / "session_1.json"))
    assert record["world_size"] == 1 and record["device"].startswith("cuda")
    manifest = json.load(open(tmp_path / "results" / "manifest.json"))
    assert manifest["device"]["gpu"] == torch.cuda.get_device_name()


def test_a_resume_on_the_gpu_continues_a_gpu_run(tmp_path):
    from utils.run.session import main
    whole = tmp_path / "whole"
    main(train_digits.args, ["train_digits.py", "0"] + digits_words(whole))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for name in ("results/session_1.json", "models/session_1_model.pt",
                 "models/session_1_memory.json"):
        os.remove(cut / name)
    main(train_digits.args, ["train_digits.py", "1"] + digits_words(cut))
    resumed = json.load(open(cut / "results" / "session_1.json"))
    uninterrupted = json.load(open(whole / "results" / "session_1.json"))
    assert resumed["device"].startswith("cuda")
    # GPU kernels need not sum in a fixed order: the two agree to run-to-run noise, not bits
    for key in ("acc_task_aware", "acc_task_agnostic"):
        assert abs(resumed[key] - uninterrupted[key]) <= 10.0
    manifest = json.load(open(cut / "results" / "manifest.json"))
    assert manifest["resumes"][-1]["task"] == 1
    assert manifest["resumes"][-1]["device"]["name"].startswith("cuda")


def test_the_batched_first_steps_equal_the_loop_on_the_gpu(cfg_factory, exact_float32):
    cfg = dict(variant="paper", r=2, optimizer="radam", lr=1e-3, weight_decay=1e-3, beta=1.0,
               num_class=CPT * TASKS, class_per_task=CPT, num_task=TASKS)
    torch.manual_seed(0)
    start = ReducedResNet18((3, 8, 8), CPT * TASKS).cuda()
    models = {}
    for batched in (False, True):
        model = copy.deepcopy(start)
        learner = L.MetaLearner(model, cfg_factory(batched_tasks=batched, **cfg), session=2,
                                device="cuda")
        for seed in (0, 1):
            learner.meta_step(*batch(seed))
        learner.finish()
        models[batched] = model.state_dict()
    for name, value in models[True].items():
        torch.testing.assert_close(value, models[False][name], rtol=1e-4, atol=1e-5, msg=name)


SHRUNK = dict(epochs=1, schedule=[], train_batch=16, test_batch=32, num_workers=0, adapt_batch=8,
              continuum=4, num_class=20, class_per_task=10, num_task=2, memory=20, device="cuda")


def cifar_args(tmp_path, monkeypatch, **over):
    F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(str(tmp_path / "data")))
    fields = dict(SHRUNK, data_path=str(tmp_path / "data"), checkpoint=str(tmp_path / "results"),
                  savepoint=str(tmp_path / "models"), **over)
    return type("args", (train_cifar.args,), fields)


# Last in the file, compile last: it takes longest, so a time limit cuts nothing else.
@pytest.mark.parametrize("option", ["amp", "gpu_data", "channels_last", "batched_tasks", None,
                                    "compile"])
def test_each_speed_option_runs_two_sessions_to_finite_labelled_results(tmp_path, monkeypatch,
                                                                         option):
    over = {"channels_last": False}
    if option:
        over[option] = True
    if option == "batched_tasks":
        over["variant"] = "paper"  # its tasks all start from the base
    records = run(cifar_args(tmp_path, monkeypatch, **over), 0, "train_cifar.py")
    assert [r["session"] for r in records] == [0, 1]
    for r in records:
        assert r["device"].startswith("cuda") and r["args"].get(option, True) is True
        for key in ("acc_task_agnostic", "acc_per_sample", "acc_task_aware", "acc_base"):
            assert 0.0 <= r[key] <= 100.0
        assert np.isfinite(r["final_train_loss"])
        assert list(r["acc_task_agnostic_by_continuum"]) == ["1", "2", "4", "5", "10", "20",
                                                              "50"]
