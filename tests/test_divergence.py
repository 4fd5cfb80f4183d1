"""A session whose training goes non-finite stops at the end of that epoch and saves nothing."""
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

import learner_task_itaml as L
from utils.run import epochs as E
from utils.run.epochs import train_session
from utils.errors import ConfigError, Diverged
from utils.run.session import run


def diverging(args, lr=1e6):
    return type("args", (args,), {"lr": lr})


def session_files(args, t):
    return [os.path.join(args.checkpoint, f"session_{t}.json"),
            os.path.join(args.savepoint, f"session_{t}_model.pt"),
            os.path.join(args.savepoint, f"session_{t}_memory.json")]


def contents(paths):
    return {p: open(p, "rb").read() for p in paths}


def test_a_fresh_run_that_diverges_stops_in_session_0_and_saves_nothing_of_it(small_args):
    with pytest.raises(ConfigError) as caught:
        run(diverging(small_args), 0, "train_digits.py", ["lr=1e6"])
    assert str(caught.value) == ("session 0 diverged: the training loss became non-finite in "
                                 "epoch 1 of 2; lower args.lr (now 1e+06) or check the data; "
                                 "nothing of session 0 was written; resume with "
                                 "`python3 train_digits.py 0 lr=1e6`.")
    assert not any(os.path.exists(p) for p in session_files(small_args, 0))


def test_a_diverging_resume_keeps_the_finished_sessions_and_can_be_redone(small_args):
    run(small_args, 0, "train_digits.py")
    for p in session_files(small_args, 2):  # leave sessions 0 and 1 finished
        os.remove(p)
    finished = contents(session_files(small_args, 0) + session_files(small_args, 1))
    with pytest.raises(ConfigError, match=r"^session 2 diverged: .* in epoch 1 of 2; lower "
                                          r"args.lr \(now 1e\+06\) or check the data; nothing of "
                                          r"session 2 was written; resume with `python3 "
                                          r"train_digits.py 2`\.$"):
        run(diverging(small_args), 2, "train_digits.py")
    assert contents(finished) == finished
    assert not any(os.path.exists(p) for p in session_files(small_args, 2))
    records = run(small_args, 2, "train_digits.py")
    assert [r["session"] for r in records] == [2]
    assert all(os.path.exists(p) for p in session_files(small_args, 2))
    assert contents(finished) == finished


def test_the_extended_message_keeps_one_sentence():
    e = Diverged(3, 2, 10, "the weights", 0.1)
    assert e.extended("resume with `python3 train_digits.py 3`") == (
        "session 3 diverged: the weights became non-finite in epoch 2 of 10; lower args.lr (now "
        "0.1) or check the data; resume with `python3 train_digits.py 3`.")


# ---------------------------------------------------------------- the learner alone

class Linear(nn.Module):
    """θ: one 3×3 layer, φ: a head of 2 tasks × 2 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Linear(3, 3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(self.features(x))


def learner(cfg_factory, epochs=3, lr=0.1):
    cfg = cfg_factory(variant="paper", optimizer="sgd", lr=lr, momentum=0.0, weight_decay=0.0,
                      num_class=4, class_per_task=2, num_task=2, epochs=epochs, schedule=[])
    return L.MetaLearner(Linear(), cfg, session=1)


def batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 3, 0, 2])) for _ in range(n)]


def test_epoch_losses_hold_one_finite_float_an_epoch(cfg_factory):
    result = train_session(learner(cfg_factory, epochs=3), batches())
    assert len(result.losses) == 3
    assert all(type(loss) is float and math.isfinite(loss) for loss in result.losses)
    assert result.final_loss == result.losses[-1]
    assert result.losses[0] != result.losses[-1]  # each epoch's own, not one repeated


def test_weights_gone_non_finite_under_a_finite_loss_stop_the_session(cfg_factory, monkeypatch):
    """A step that leaves one weight infinite while its own loss, taken before it, is finite."""
    real = L.MetaLearner.meta_step

    def step_to_inf(self, x, y):
        loss = real(self, x, y)
        self.weights.data[-1] = math.inf
        return loss
    monkeypatch.setattr(L.MetaLearner, "meta_step", step_to_inf)
    meta = learner(cfg_factory, epochs=3)
    with pytest.raises(Diverged, match=r"^session 1 diverged: the weights became non-finite in "
                                       r"epoch 1 of 3; lower args.lr \(now 0.1\)"):
        train_session(meta, batches(1))
    assert not meta.weights.attached()  # the model was handed back, its weights its own


def test_a_non_finite_loss_on_another_rank_stops_this_one_too(cfg_factory, monkeypatch):
    """Under torchrun the flags are summed over the ranks: pretend another rank's loss is NaN."""
    def other_rank_nan(tensors, ctx):
        tensors[0][0] += 1
    monkeypatch.setattr(E.distributed, "all_reduce_sum_", other_rank_nan)
    with pytest.raises(Diverged, match="the training loss became non-finite in epoch 1 of 3"):
        train_session(learner(cfg_factory), batches())


def test_the_check_reads_the_device_once_an_epoch(cfg_factory, monkeypatch):
    """Every conversion of a tensor to a Python value made in the learner's own code: one an epoch
    (loss and flags together), none a step, in the learner's and the epochs' code. split_by_task
    reads labels already on the host."""
    reads = []

    def counted(name):
        real = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            caller = sys._getframe(1).f_code
            if caller.co_filename in (L.__file__, E.__file__) and caller.co_name != "split_by_task":
                reads.append(caller.co_name)
            return real(self, *a, **k)
        return read
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    train_session(learner(cfg_factory, epochs=3), batches(4))
    assert len(reads) == 3, reads
