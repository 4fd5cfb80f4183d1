"""The four inference protocols on a model whose logits are set by hand."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import learner_task_itaml as L
from data_sources import Source, TensorData
from incremental_dataloader import IncrementalData, ReplayMemory

# Logits = inputs (identity head). 2 tasks × 2 classes; each task's 4 samples form one continuum.
LOGITS = [
    [3.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.5, 1.0, 2.5, 0.0], [0.0, 1.0, 0.0, 0.5],  # task 0
    [0.0, 0.0, 1.0, 0.0], [4.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 2.0], [0.0, 0.0, 0.0, 2.0],  # task 1
]
LABELS = [0, 1, 0, 1, 2, 3, 2, 3]


class Echo(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(4))

    def forward(self, x):
        return self.head(self.features(x))


def setup(cfg_factory, adapt_epochs=0):
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, continuum=4,
                      adapt_epochs=adapt_epochs, test_batch=3, adapt_batch=2)
    test = TensorData(torch.tensor(LOGITS), LABELS)
    train = TensorData(torch.tensor(LOGITS), LABELS)
    data = IncrementalData(cfg, source=Source(train, train, test, train.labels, test.labels, 4, (4,)))
    memory = ReplayMemory(8)
    memory.update(data, [0, 1, 2, 3], session=1)
    return cfg, data, memory


def test_each_protocol_on_controlled_logits(cfg_factory):
    cfg, data, memory = setup(cfg_factory)
    res = L.evaluate(Echo(), data, memory, 1, cfg, "cpu", seed=0)
    # Worked by hand: the continuum fixes task 0's sample 2 but sends all of task 1 to task 0.
    assert res["acc_task_agnostic"] == pytest.approx(50.0)
    assert res["acc_per_sample"] == pytest.approx(62.5)
    assert res["acc_task_aware"] == pytest.approx(87.5)
    assert res["acc_base"] == pytest.approx(62.5)
    assert res["task_prediction_acc"] == pytest.approx(50.0)
    assert res["task_prediction_acc_per_sample"] == pytest.approx(62.5)
    assert res["per_task"] == {"task_agnostic": [100.0, 0.0], "per_sample": [75.0, 50.0],
                               "task_aware": [100.0, 75.0], "base": [75.0, 50.0]}
    assert res["num_test_samples"] == 8


def test_session0_sees_only_task0_and_never_adapts(cfg_factory, monkeypatch):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    monkeypatch.setattr(L, "adapt", lambda *a, **k: pytest.fail("adapted at session 0"))
    res = L.evaluate(Echo(), data, memory, 0, cfg, "cpu")
    assert res["num_test_samples"] == 4
    assert res["acc_task_agnostic"] == pytest.approx(100.0)  # one task: argmax within task 0 only
    # Sample 2's largest logit is in class 2, not seen yet: the base argmax ignores it.
    assert res["acc_base"] == pytest.approx(100.0)


def test_adapts_once_per_task_on_that_tasks_exemplars(cfg_factory, monkeypatch):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    calls = []
    real = L.adapt

    def spy(model, data_, memory_, k, cfg_, device, seed):
        calls.append(k)
        return real(model, data_, memory_, k, cfg_, device, seed)
    monkeypatch.setattr(L, "adapt", spy)
    L.evaluate(Echo(), data, memory, 1, cfg, "cpu")
    assert sorted(calls) == [0, 1]


def test_adapt_moves_only_the_task_slice_and_leaves_the_base(cfg_factory):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    base = Echo()
    adapted = L.adapt(base, data, memory, 1, cfg, "cpu", seed=0)
    assert torch.equal(base.head.weight, torch.eye(4))  # a copy was adapted
    assert torch.equal(adapted.head.weight[:2], torch.eye(4)[:2])  # task 0's rows: no gradient
    assert not torch.equal(adapted.head.weight[2:], torch.eye(4)[2:])


def test_adapt_survives_a_last_batch_of_one_sample_with_batchnorm(cfg_factory):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)  # task 1 has 4 exemplars
    cfg.adapt_batch = 3  # batches of 3 and 1
    model = Echo()
    model.features = nn.BatchNorm1d(4)
    adapted = L.adapt(model, data, memory, 1, cfg, "cpu", seed=0)
    assert adapted.training and adapted.features.training
    assert adapted.features.num_batches_tracked.item() == 1  # the batch of one left them alone


def test_task_scores_take_the_max_of_each_slice():
    s = L.task_scores(torch.tensor([[1.0, 5.0, -2.0, 0.5, 9.0, 9.0]]), 2, 2)
    assert s.tolist() == [[5.0, 0.5]]  # the third task's slice is not seen yet


def test_continua_hold_one_task_and_at_most_p_samples():
    true_task = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0])  # task 0: 5 samples, task 1: 3
    ids = L.continuum_ids(true_task, 2, torch.Generator().manual_seed(0))
    groups = {}
    for i, c in enumerate(ids.tolist()):
        groups.setdefault(c, []).append(i)
    assert sorted(groups) == list(range(5))  # ceil(5/2) + ceil(3/2)
    for members in groups.values():
        assert len(members) <= 2
        assert len({int(true_task[i]) for i in members}) == 1
    assert sorted(len(m) for m in groups.values()) == [1, 1, 2, 2, 2]


def test_continuum_shuffle_is_seeded():
    true_task = torch.zeros(40, dtype=torch.long)
    a = L.continuum_ids(true_task, 5, torch.Generator().manual_seed(1))
    b = L.continuum_ids(true_task, 5, torch.Generator().manual_seed(1))
    c = L.continuum_ids(true_task, 5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_predict_tasks_averages_over_the_continuum():
    scores = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    continuum = torch.tensor([0, 0, 0, 1])
    assert L.predict_tasks(scores, continuum).tolist() == [0, 0, 0, 1]
    assert L.predict_tasks(scores, torch.arange(4)).tolist() == [0, 1, 1, 1]


def test_accuracy_in_percent():
    assert L.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 75.0
    assert np.isnan(L.accuracy(torch.tensor([]), torch.tensor([])))
