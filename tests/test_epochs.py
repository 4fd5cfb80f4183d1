"""A session's epochs around any method's step (utils/run/epochs.py): the schedule, the release's model
selection, the progress bar and what ``train_session`` returns."""
import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from learner_task_itaml import MetaLearner
from utils.fast.distributed import DistContext
from utils.run.epochs import ReleaseSelection, lr_at, train_session


class Line(nn.Module):
    """features (2 → 2) and a head of four rows, float64."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.features = nn.Linear(2, 2, bias=False)
        self.head = nn.Linear(2, 4, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.randn(2, 2, generator=g))
            self.head.weight.copy_(torch.randn(4, 2, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.features(x))


class PlainSGD:
    """The smallest method behind the seam: one SGD step on the batch's cross-entropy; it records
    the learning rates it was given and whether it was finished."""

    def __init__(self, model, cfg):
        self.model, self.cfg, self.session, self.device, self.ctx = model, cfg, 1, "cpu", DistContext()
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        self.lrs, self.finished = [], False

    def set_lr(self, lr):
        self.lrs.append(lr)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, x, y):
        self.opt.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def weights_finite(self):
        return torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()

    def finish(self):
        self.finished = True


def cfg(**over):
    return SimpleNamespace(**{"lr": 0.3, "gamma": 0.5, "schedule": [], "epochs": 4, **over})


def batches():
    x = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4], [0.6, 0.9]], dtype=torch.float64)
    return [(x, torch.tensor([0, 1, 2, 3]))]


def weights(model):
    return [p.detach().numpy().copy() for p in model.parameters()]


def test_lr_schedule_steps_at_milestones():
    c = cfg(lr=0.1, schedule=[5, 10, 15])
    assert [lr_at(c, e) for e in (0, 4, 5, 9, 10, 15, 19)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.0125])


def test_each_epoch_gets_its_scheduled_lr_and_the_method_is_finished():
    method = PlainSGD(Line(), cfg(schedule=[1, 3]))
    result = train_session(method, batches())
    assert method.lrs == pytest.approx([0.3, 0.15, 0.15, 0.075])
    assert method.finished
    assert len(result.losses) == 4 and result.final_loss == result.losses[-1]
    assert result.losses[-1] < result.losses[0]  # the steps trained
    assert result.selection == {"model_selection": "last", "selected_epoch": 4}


def test_training_shows_an_epoch_progress_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    train_session(PlainSGD(Line(), cfg(epochs=3)), batches(), desc="session 1/1")
    shown = sys.stderr.getvalue()
    assert "session 1/1" in shown and "/3 [" in shown and "epoch/s" in shown and "loss=" in shown


class Selectable(nn.Module):
    """One weight and one BatchNorm buffer, both set to the epoch number after each epoch."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("stat", torch.zeros(1))


@pytest.mark.parametrize("accuracies,epochs,kept", [
    # no late epoch (0-based > epochs − 10 = 2) beats epoch 1's 90: the last epoch's weights stay
    ([50, 90, 60, 70, 80, 85, 89, 88, 87, 86, 80, 70], 12, 12),
    # epoch 8 beats everything before it; epoch 10 ties it and does not replace it
    ([50, 90, 60, 70, 80, 85, 89, 88, 95, 86, 95, 70], 12, 9),
    # every later record replaces the kept one; a best early epoch counts only as the bar
    ([99, 10, 20, 30, 40, 50, 60, 70, 80, 99.5, 99.7, 10], 12, 11),
    # epoch 2 = epochs − 10 is not late: its record only raises the bar
    ([50, 60, 95, 70, 80, 85, 89, 88, 87, 86, 80, 70], 12, 12),
    # with fewer than 10 epochs every epoch may be kept (the release's MNIST session 0: 5)
    ([40, 70, 60, 50, 45], 5, 2),
    # nothing beats 0 (the release's starting bar): the last epoch's weights
    ([0, 0, 0], 3, 3),
])
def test_release_model_selection_keeps_the_best_late_epoch(accuracies, epochs, kept):
    model, selection = Selectable(), ReleaseSelection(epochs)
    for epoch, acc in enumerate(accuracies):
        with torch.no_grad():
            model.w.fill_(epoch + 1)
            model.stat.fill_(epoch + 1)
        selection.after_epoch(epoch, acc, model)
    selection.restore(model)
    assert model.w.item() == kept and model.stat.item() == kept  # statistics come with the weights
    assert selection.summary() == {"model_selection": "release", "selected_epoch": kept,
                                   "selection_test_acc_per_epoch": accuracies}


@pytest.mark.parametrize("make", ["plain", "itaml"])
def test_train_session_reads_the_test_accuracy_after_every_epoch_and_restores(make, cfg_factory):
    model = Line()
    if make == "plain":
        method = PlainSGD(model, cfg())
    else:
        method = MetaLearner(model, cfg_factory(
            variant="paper", r=1, optimizer="sgd", lr=0.3, momentum=0.0, weight_decay=0.0,
            beta=1.0, num_class=4, class_per_task=2, num_task=2, epochs=4, schedule=[]), session=1)
    snapshots = []

    def test_accuracy():  # epoch 2 (1-based) is the best
        snapshots.append(weights(model))
        return [10.0, 30.0, 20.0, 25.0][len(snapshots) - 1]
    result = train_session(method, batches(), test_accuracy=test_accuracy)
    assert len(snapshots) == 4
    assert not np.array_equal(snapshots[1][0], snapshots[3][0])  # the weights did move on
    for got, want in zip(weights(model), snapshots[1]):
        np.testing.assert_array_equal(got, want)
    assert result.selection == {"model_selection": "release", "selected_epoch": 2,
                                "selection_test_acc_per_epoch": [10.0, 30.0, 20.0, 25.0]}
