"""The baselines behind iTAML's method seam (baselines.py, utils/run/methods.py): ER's step against one
optimizer step on a loss written out by hand, what each method trains on and keeps, the same
evaluation for every method, refusals, and the field's class order."""
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn as nn

import baselines as B
from incremental_dataloader import IncrementalData, make_class_order
from utils.config import check_args
from utils.errors import ConfigError
from utils.fast import distributed as D
from utils.inference import evaluate
from utils.run import session as S
from utils.run.methods import METHODS
from utils.run.restore import restore_data, restore_session
from utils.run.store import RunStore

CPT = 2


class Net(nn.Module):
    """θ = one linear layer and BatchNorm, φ = a bias-free head of CPT rows a task (3 tasks)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.features = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU())
        self.head = nn.Linear(4, 3 * CPT, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.features(x))


X = torch.linspace(-1.2, 1.4, 8 * 3, dtype=torch.float64).reshape(8, 3).cos()
Y = torch.tensor([0, 1, 2, 3, 2, 3, 3, 1])  # tasks 0 and 1 of session 1


def loss_by_hand(logits, y, loss, seen):
    """The two losses written out from their definitions, sample by sample."""
    total = 0.0
    for z, label in zip(logits, y.tolist()):
        if loss == "ce":
            total = total - (z[label] - torch.logsumexp(z[:seen], 0))
        else:
            k = label // CPT
            own = z[k * CPT:(k + 1) * CPT]
            target = torch.zeros(CPT, dtype=z.dtype)
            target[label - k * CPT] = 1.0
            p = torch.sigmoid(own)
            total = total - (target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    return total / len(y)


@pytest.mark.parametrize("loss", ["task_bce", "ce"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_er_step_is_one_optimizer_step_on_the_batch_loss(cfg_factory, loss, optimizer):
    cfg = cfg_factory(method="er", er_loss=loss, optimizer=optimizer, lr=0.2, momentum=0.9,
                      weight_decay=0.01, num_class=6, class_per_task=CPT, num_task=3)
    got, want = Net(), Net()
    method = B.ExperienceReplay(got, cfg, session=1)
    for _ in range(2):  # the second step sees the first one's optimizer state
        returned = method.step(X, Y)
        opt = (torch.optim.SGD(want.parameters(), lr=0.2, momentum=0.9, weight_decay=0.01)
               if optimizer == "sgd" else
               torch.optim.Adam(want.parameters(), lr=0.2, weight_decay=0.01))
        if _ == 0:
            reference = opt
        reference.zero_grad()
        expected = loss_by_hand(want(X), Y, loss, seen=2 * CPT)
        expected.backward()
        reference.step()
        assert returned.item() == pytest.approx(expected.item(), rel=1e-12)
    for (name, a), b in zip(got.named_parameters(), want.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    for a, b in zip(got.buffers(), want.buffers()):  # BatchNorm saw both batches in train mode
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not torch.equal(got.head.weight, Net().head.weight)


def test_ce_reads_the_seen_classes_only_and_task_bce_each_samples_own_slice(cfg_factory):
    """Logits of classes not yet seen move neither loss; task_bce's gradient on a sample lies in
    its task's slice alone."""
    logits = torch.randn(len(Y), 3 * CPT, dtype=torch.float64, requires_grad=True)
    for loss in ("ce", "task_bce"):
        cfg = cfg_factory(method="er", er_loss=loss, num_class=6, class_per_task=CPT, num_task=3)
        logits.grad = None
        B.er_loss(logits, Y, cfg, session=1).backward()
        assert torch.equal(logits.grad[:, 2 * CPT:], torch.zeros(len(Y), CPT, dtype=torch.float64))
        if loss == "task_bce":
            for n, label in enumerate(Y.tolist()):
                other = [c for c in range(3 * CPT) if c // CPT != label // CPT]
                assert torch.equal(logits.grad[n, other], torch.zeros(len(other), dtype=torch.float64))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_er_under_torchrun_one_rank_equals_the_plain_step(cfg_factory, monkeypatch):
    """The sharded step (loss summed over the global count, gradients and statistics reduced over
    the ranks) takes the plain step's arithmetic with one rank."""
    for name, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    cfg = cfg_factory(method="er", optimizer="sgd", lr=0.2, num_class=6, class_per_task=CPT,
                      num_task=3)
    ctx = D.setup("cpu")
    try:
        sharded, plain = Net(), Net()
        shard_method = B.ExperienceReplay(sharded, cfg, 1, ctx=ctx)
        plain_method = B.ExperienceReplay(plain, cfg, 1)
        for _ in range(2):
            a, b = shard_method.step(X, Y), plain_method.step(X, Y)
            assert a.item() == pytest.approx(b.item(), rel=1e-12)
    finally:
        D.cleanup(ctx)
    for a, b in zip(list(sharded.parameters()) + list(sharded.buffers()),
                    list(plain.parameters()) + list(plain.buffers())):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ through the session loop

@pytest.fixture
def spied_runs(small_args, monkeypatch):
    """run(method) on the shrunk demo: its records and, per session, the training indices."""
    seen = {}
    real = S.train_session

    def spy(method, loader, desc="train", test_accuracy=None):
        seen[method.session] = sorted(loader.dataset.indices)
        return real(method, loader, desc, test_accuracy)
    monkeypatch.setattr(S, "train_session", spy)

    def run(method, **over):
        seen.clear()
        args = type("args", (small_args,), {"method": method, **over})
        records = S.run(args, 0, "train_digits.py")
        return args, records, dict(seen)
    return run


def memory_of(args, t):
    with open(os.path.join(args.savepoint, f"session_{t}_memory.json")) as f:
        return {int(c): v for c, v in json.load(f)["exemplars"].items()}


def test_finetuning_keeps_no_memory_and_trains_on_the_new_task_alone(spied_runs):
    args, records, seen = spied_runs("finetune")
    data = IncrementalData(check_args(args))
    for t in range(3):
        assert seen[t] == sorted(data.task_indices(t).tolist())
        assert memory_of(args, t) == {}
        assert records[t]["memory_exemplars"] == 0 and records[t]["method"] == "finetune"


def test_joint_training_holds_every_seen_tasks_data_once_and_keeps_the_memory(spied_runs):
    args, records, seen = spied_runs("joint")
    data = IncrementalData(check_args(args))
    for t in range(3):
        want = np.concatenate([data.task_indices(k) for k in range(t + 1)])
        assert seen[t] == sorted(want.tolist()) and len(set(seen[t])) == len(seen[t])
        assert sorted(memory_of(args, t)) == list(range(2 * (t + 1)))  # for the single update


def test_er_trains_on_the_new_task_and_the_memory_as_itaml_does(spied_runs):
    er_args, _, er = spied_runs("er")
    itaml_args, _, itaml = spied_runs("itaml", checkpoint=er_args.checkpoint + "_itaml",
                                      savepoint=er_args.savepoint + "_itaml")
    data = IncrementalData(check_args(er_args))
    assert er == itaml
    for t in (1, 2):
        memory = [i for v in memory_of(er_args, t - 1).values() for i in v]
        assert er[t] == sorted(data.task_indices(t).tolist() + memory)


@pytest.mark.parametrize("method", ["er", "finetune"])
def test_every_methods_records_are_the_one_evaluation(spied_runs, method):
    """A record's accuracies are utils.inference.evaluate's on the saved model and memory."""
    args, records, _ = spied_runs(method)
    cfg = check_args(args)
    store = RunStore(cfg)
    data = restore_data(cfg, store, torch.device("cpu"))
    for t in (1, 2):
        model, memory = restore_session(cfg, store, data, t, records[t])
        again = evaluate(model, data, memory, t, cfg, torch.device("cpu"), S.session_seed(cfg, t))
        for key in ("acc_task_agnostic", "acc_per_sample", "acc_task_aware", "acc_base",
                    "per_task", "acc_task_agnostic_by_continuum"):
            assert again[key] == records[t][key], key


def test_itaml_by_default_and_by_name_are_the_same_run(small_args, tmp_path):
    """An args class without ``method`` (as every script was before it) is iTAML: the same bytes as
    ``method = "itaml"``, and ER's differ."""
    fields = {k: getattr(small_args, k) for k in dir(small_args)
              if not k.startswith("_") and k != "method"}

    def models(over, name):
        args = type("args", (), {**fields, "checkpoint": str(tmp_path / name / "r"),
                                 "savepoint": str(tmp_path / name / "m"), **over})
        S.run(args, 0, "train_digits.py")
        return [open(os.path.join(args.savepoint, f"session_{t}_model.pt"), "rb").read()
                for t in range(3)]
    default = models({}, "default")
    assert models({"method": "itaml"}, "named") == default
    assert models({"method": "er"}, "er") != default


def test_a_resume_cannot_change_the_method(spied_runs):
    args, _, _ = spied_runs("er")
    os.remove(os.path.join(args.checkpoint, "session_2.json"))
    with pytest.raises(ConfigError, match=r"args.method = 'itaml' but the finished sessions used "
                                          r"'er' .* would change the method that trained"):
        S.run(type("args", (args,), {"method": "itaml"}), 2, "train_digits.py")


def test_batched_tasks_is_refused_for_a_baseline(cfg_factory):
    with pytest.raises(ConfigError, match=r"args.batched_tasks = True batches iTAML's inner loops, "
                                          r"but args.method = 'er' has none"):
        cfg_factory(method="er", variant="paper", batched_tasks=True)


def test_the_factory_knows_every_method_the_table_allows(cfg_factory):
    for name in METHODS:
        assert cfg_factory(method=name).method == name
    with pytest.raises(ConfigError, match=r"args.method = 'ewc' is invalid; it must be one of "
                                          r"'itaml', 'er', 'finetune', 'joint'"):
        cfg_factory(method="ewc")


def test_seed1993_is_the_fields_class_order():
    """PyCIL's and FACIL's cifar100_icarl order (np.random.seed(1993), then a permutation), whatever
    args.seed; "shuffled" draws from args.seed."""
    icarl = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38]
    for seed in (0, 3):
        assert make_class_order("seed1993", 100, seed)[:20] == icarl
    assert make_class_order("shuffled", 100, 0)[:20] != icarl
    order = make_class_order("seed1993", 10, 0)
    assert sorted(order) == list(range(10)) and order != list(range(10))
