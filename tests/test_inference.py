"""The four inference protocols on a model whose logits are set by hand."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import utils.inference as I
from incremental_dataloader import IncrementalData
from utils.data.memory import ReplayMemory
from utils.data.sources import Source, TensorData

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
    res = I.evaluate(Echo(), data, memory, 1, cfg, "cpu", seed=0)
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
    monkeypatch.setattr(I, "adapt", lambda *a, **k: pytest.fail("adapted at session 0"))
    res = I.evaluate(Echo(), data, memory, 0, cfg, "cpu")
    assert res["num_test_samples"] == 4
    assert res["acc_task_agnostic"] == pytest.approx(100.0)  # one task: argmax within task 0 only
    # Sample 2's largest logit is in class 2, not seen yet: the base argmax ignores it.
    assert res["acc_base"] == pytest.approx(100.0)


def test_adapts_once_per_task_on_that_tasks_exemplars(cfg_factory, monkeypatch):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    calls = []
    real = I.adapt

    def spy(model, data_, memory_, k, cfg_, device, seed):
        calls.append(k)
        return real(model, data_, memory_, k, cfg_, device, seed)
    monkeypatch.setattr(I, "adapt", spy)
    I.evaluate(Echo(), data, memory, 1, cfg, "cpu")
    assert sorted(calls) == [0, 1]


def test_adapt_moves_only_the_task_slice_and_leaves_the_base(cfg_factory):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    base = Echo()
    adapted = I.adapt(base, data, memory, 1, cfg, "cpu", seed=0)
    assert torch.equal(base.head.weight, torch.eye(4))  # a copy was adapted
    assert torch.equal(adapted.head.weight[:2], torch.eye(4)[:2])  # task 0's rows: no gradient
    assert not torch.equal(adapted.head.weight[2:], torch.eye(4)[2:])


def test_adapt_survives_a_last_batch_of_one_sample_with_batchnorm(cfg_factory):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)  # task 1 has 4 exemplars
    cfg.adapt_batch = 3  # batches of 3 and 1
    model = Echo()
    model.features = nn.BatchNorm1d(4)
    adapted = I.adapt(model, data, memory, 1, cfg, "cpu", seed=0)
    assert adapted.training and adapted.features.training
    assert adapted.features.num_batches_tracked.item() == 1  # the batch of one left them alone


def test_task_scores_take_the_max_of_each_slice():
    s = I.task_scores(torch.tensor([[1.0, 5.0, -2.0, 0.5, 9.0, 9.0]]), 2, 2)
    assert s.tolist() == [[5.0, 0.5]]  # the third task's slice is not seen yet


def test_continua_hold_one_task_and_at_most_p_samples():
    true_task = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0])  # task 0: 5 samples, task 1: 3
    ids = I.continuum_ids(true_task, 2, torch.Generator().manual_seed(0))
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
    a = I.continuum_ids(true_task, 5, torch.Generator().manual_seed(1))
    b = I.continuum_ids(true_task, 5, torch.Generator().manual_seed(1))
    c = I.continuum_ids(true_task, 5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_predict_tasks_averages_over_the_continuum():
    scores = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    continuum = torch.tensor([0, 0, 0, 1])
    assert I.predict_tasks(scores, continuum).tolist() == [0, 0, 0, 1]
    assert I.predict_tasks(scores, torch.arange(4)).tolist() == [0, 1, 1, 1]


def test_accuracy_in_percent():
    assert I.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 75.0
    assert np.isnan(I.accuracy(torch.tensor([]), torch.tensor([])))


# ---------------------------------------------------------------- mutations a reviewer would try

class Recorder(Echo):
    """Echo that records every input it trains on (a class attribute: adapt deep-copies models)."""
    seen = []

    def forward(self, x):
        if self.training:
            Recorder.seen.append(x.detach().clone())
        return super().forward(x)


def test_single_update_trains_on_the_tasks_exemplars_from_the_training_set_with_training_transforms(
        cfg_factory):
    """Training, plain-training and test samples all differ (the training transform adds 100), so
    the adapted copy's inputs show where they came from: the training set, through its training
    transform, and only task k's exemplars."""
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, continuum=4, adapt_epochs=1,
                      test_batch=3, adapt_batch=2)
    train_x = torch.arange(32, dtype=torch.float32).reshape(8, 4)
    train = TensorData(train_x, LABELS, transform=lambda x: x + 100.0)
    plain = TensorData(train_x, LABELS)
    test = TensorData(-train_x - 1.0, LABELS)
    data = IncrementalData(cfg, source=Source(train, plain, test, train.labels, test.labels, 4, (4,)))
    memory = ReplayMemory(4)  # one exemplar a class
    memory.update(data, [0, 1, 2, 3], session=1)
    Recorder.seen = []
    I.adapt(Recorder(), data, memory, 1, cfg, "cpu", seed=0)
    got = sorted(map(tuple, torch.cat(Recorder.seen).tolist()))
    want = sorted(tuple((train_x[i] + 100.0).tolist()) for i in memory.indices([2, 3]))
    assert got == want and len(want) == 2


def test_task_of_a_continuum_is_the_mean_of_each_samples_slice_maximum(cfg_factory):
    """Task 0's continuum is task 0 by the mean over its samples of each sample's largest logit in a
    slice (4 against 3.5), but task 1 by the largest logit of any sample (4 against 5) and by the
    largest of the mean logits (2 against 3.5)."""
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, continuum=4, adapt_epochs=0,
                      test_batch=3, adapt_batch=2)
    logits = torch.tensor([[4.0, 0.0, 5.0, 5.0], [0.0, 4.0, 3.0, 3.0], [4.0, 0.0, 3.0, 3.0],
                           [0.0, 4.0, 3.0, 3.0],                                    # task 0
                           [0.0, 0.0, 6.0, 0.0], [0.0, 0.0, 0.0, 6.0], [0.0, 0.0, 6.0, 0.0],
                           [0.0, 0.0, 0.0, 6.0]])                                   # task 1
    samples = TensorData(logits, LABELS[:2] * 2 + LABELS[4:6] * 2)
    data = IncrementalData(cfg, source=Source(samples, samples, samples, samples.labels,
                                              samples.labels, 4, (4,)))
    memory = ReplayMemory(8)
    memory.update(data, [0, 1, 2, 3], session=1)
    res = I.evaluate(Echo(), data, memory, 1, cfg, "cpu", seed=0)
    assert res["task_prediction_acc"] == 100.0 and res["acc_task_agnostic"] == 100.0
    assert res["task_prediction_acc_per_sample"] == 87.5  # sample 0 alone looks like task 1


def test_single_update_uses_adapt_lr_not_lr(cfg_factory):
    """One Adam step from zero moments moves each weight by lr·g/(|g| + ε), about ``adapt_lr``
    wherever the gradient is not tiny; the inner loop's ``lr`` is 500 times larger here."""
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    cfg.lr, cfg.adapt_lr, cfg.adapt_batch = 0.5, 1e-3, 8  # one batch: task 1's 4 exemplars
    base = Echo()
    adapted = I.adapt(base, data, memory, 1, cfg, "cpu", seed=0)
    moved = (adapted.head.weight - base.head.weight).abs()
    assert moved.max().item() == pytest.approx(1e-3, rel=1e-3)


# ---------------------------------------------------------------- accuracy against continuum size

def evaluate_on(cfg_factory, logits, labels, continuum, seed=0):
    """``evaluate`` at session 1 on an Echo model whose logits are ``logits``, with no adaptation
    (the true task's slice argmax classifies)."""
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, continuum=continuum,
                      adapt_epochs=0, test_batch=16, adapt_batch=2)
    samples = TensorData(torch.tensor(logits), labels)
    data = IncrementalData(cfg, source=Source(samples, samples, samples, samples.labels,
                                              samples.labels, 4, (4,)))
    memory = ReplayMemory(len(labels))
    memory.update(data, [0, 1, 2, 3], session=1)
    return I.evaluate(Echo(), data, memory, 1, cfg, "cpu", seed=seed)


# Task 0: all four samples point to task 0 (slice maximum 2 against 0), but sample 3 (label 1) is
# classified as class 0. Task 1: samples 4-6 each point to task 0 (slice maxima 1 against 0),
# sample 7 to task 1 (0 against 10); their mean, 0.75 against 2.5, points to task 1.
SIZED_LOGITS = [[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0],
                [2.0, 0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0, -1.0], [1.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, -1.0],
                [0.0, 0.0, -1.0, 10.0]]
SIZED_LABELS = [0, 1, 0, 1, 2, 3, 2, 3]


def test_accuracy_grows_with_the_continuum_as_worked_by_hand(cfg_factory):
    """Alone, only sample 7 of task 1 finds its task. In pairs, whatever the shuffle, one pair of
    task 1 holds sample 7 (mean 0.5 against 5: task 1) and the other does not (1 against 0: task
    0). From 4 samples on, task 1's one continuum is routed right. Task 0 is always routed right
    and loses sample 3 to its class."""
    res = evaluate_on(cfg_factory, SIZED_LOGITS, SIZED_LABELS, continuum=4)
    assert res["task_prediction_acc_by_continuum"] == {
        "1": 62.5, "2": 75.0, "4": 100.0, "5": 100.0, "10": 100.0, "20": 100.0, "50": 100.0}
    assert res["acc_task_agnostic_by_continuum"] == {
        "1": 50.0, "2": 62.5, "4": 87.5, "5": 87.5, "10": 87.5, "20": 87.5, "50": 87.5}


def test_by_continuum_keys_are_the_sizes_as_strings_in_increasing_order(cfg_factory):
    import json
    for continuum, sizes in ((4, ["1", "2", "4", "5", "10", "20", "50"]),
                             (20, ["1", "2", "5", "10", "20", "50"]),
                             (64, ["1", "2", "5", "10", "20", "50", "64"])):
        res = json.loads(json.dumps(evaluate_on(cfg_factory, SIZED_LOGITS, SIZED_LABELS,
                                                continuum)))  # as the session record keeps it
        for key in ("acc_task_agnostic_by_continuum", "task_prediction_acc_by_continuum"):
            assert list(res[key]) == sizes
            assert all(isinstance(a, float) and 0.0 <= a <= 100.0 for a in res[key].values())


@pytest.mark.parametrize("continuum", [3, 20])
def test_by_continuum_reproduces_the_main_and_per_sample_protocols_exactly(cfg_factory,
                                                                           continuum):
    """Random logits, 45 and 38 samples a task: the shuffle matters, so the entries agree only if
    every size draws its continua exactly as the main protocol does."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(83, 4, generator=g).tolist()
    labels = [j % 2 for j in range(45)] + [2 + j % 2 for j in range(38)]
    res = evaluate_on(cfg_factory, logits, labels, continuum, seed=7)
    acc, task = res["acc_task_agnostic_by_continuum"], res["task_prediction_acc_by_continuum"]
    assert acc[str(continuum)] == res["acc_task_agnostic"]
    assert task[str(continuum)] == res["task_prediction_acc"]
    assert acc["1"] == res["acc_per_sample"]
    assert task["1"] == res["task_prediction_acc_per_sample"]
    assert len(set(task.values())) > 2  # the sizes do route differently here


def test_the_table_lists_the_accuracy_by_continuum_size(cfg_factory):
    from utils.report.records import format_table
    res = evaluate_on(cfg_factory, SIZED_LOGITS, SIZED_LABELS, continuum=4)
    record = {"session": 1, "seen_classes": 4, "continuum": 4, "seconds": 1.0, **res}
    lines = format_table(record).splitlines()
    assert lines[-2].startswith("task prediction: ")
    assert lines[-1] == ("task-agnostic by continuum size: 1: 50.00, 2: 62.50, 4: 87.50, "
                         "5: 87.50, 10: 87.50, 20: 87.50, 50: 87.50")


# ---------------------------------------------------------------- the single update's draws, BatchNorm

def noisy_setup(cfg_factory, **over):
    """Two tasks whose training transform adds noise from torch's global generator (as torchvision's
    random crops and flips draw from it), a BatchNorm network."""
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, continuum=4, adapt_epochs=1,
                      test_batch=3, adapt_batch=3, **over)
    x = torch.arange(32, dtype=torch.float32).reshape(8, 4) / 10
    train = TensorData(x, LABELS, transform=lambda v: v + torch.randn(4))
    plain = TensorData(x, LABELS)
    data = IncrementalData(cfg, source=Source(train, plain, TensorData(x, LABELS), train.labels,
                                              train.labels, 4, (4,)))
    memory = ReplayMemory(8)
    memory.update(data, [0, 1, 2, 3], session=1)
    model = Echo()
    model.features = nn.BatchNorm1d(4)
    return cfg, data, memory, model


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_single_update_draws_only_from_its_seed(cfg_factory):
    """Whatever the global generator holds (training before it drew from it), the update with one
    seed gives the same model; another seed another; and the global generator is left as it was."""
    cfg, data, memory, model = noisy_setup(cfg_factory)
    results = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        results.append(state(I.adapt(model, data, memory, 1, cfg, "cpu", seed=7)))
        follows = torch.rand(1)
        torch.manual_seed(global_seed)
        assert torch.equal(follows, torch.rand(1))  # the update left the global generator alone
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key
    other = state(I.adapt(model, data, memory, 1, cfg, "cpu", seed=8))
    assert not torch.equal(other["features.running_mean"], results[0]["features.running_mean"])


def test_reestimate_measures_batchnorm_on_the_plain_exemplars(cfg_factory):
    """adapt_bn = "reestimate": after the update, each BatchNorm layer's statistics are the plain
    average over the batches of the task's exemplars without augmentation (a batch of one sample
    gives no statistics to a layer of one value a channel), the weights the update's; "release"
    keeps what the update's train-mode passes left."""
    cfg, data, memory, model = noisy_setup(cfg_factory, adapt_bn="reestimate")
    released = I.adapt(model, data, memory, 1, cfg_factory(**{**vars(cfg), "adapt_bn": "release"}),
                       "cpu", seed=7)
    adapted = I.adapt(model, data, memory, 1, cfg, "cpu", seed=7)
    assert torch.equal(adapted.head.weight, released.head.weight)  # the same update
    indices = memory.indices([2, 3])
    plain = torch.stack([data.train_plain[i][0] for i in indices])
    batches = plain.split(cfg.adapt_batch)
    assert [len(b) for b in batches] == [3, 1]
    batches = batches[:1]  # one value a channel has no variance: that batch leaves them alone
    mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    var = torch.stack([b.var(0) for b in batches]).mean(0)
    assert torch.allclose(adapted.features.running_mean, mean, atol=1e-6)
    assert torch.allclose(adapted.features.running_var, var, atol=1e-6)
    assert adapted.features.momentum == 0.1  # restored
    assert not torch.allclose(released.features.running_mean, mean, atol=1e-3)


def test_reestimate_leaves_a_network_without_batchnorm_alone(cfg_factory):
    cfg, data, memory = setup(cfg_factory, adapt_epochs=1)
    cfg.adapt_bn = "reestimate"
    a = I.adapt(Echo(), data, memory, 1, cfg, "cpu", seed=0)
    cfg.adapt_bn = "release"
    b = I.adapt(Echo(), data, memory, 1, cfg, "cpu", seed=0)
    assert torch.equal(a.head.weight, b.head.weight)
