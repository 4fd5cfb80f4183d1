"""Exact arithmetic of Alg. 1 on a tiny linear model, against closed-form gradients in numpy."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from learner_task_itaml import MetaLearner, eta_for, single_sample_guard, task_loss

LR = 0.3
CPT = 2


class Tiny(nn.Module):
    """θ = W1 (2×2), φ = W2 (2·T × 2) and optionally a bias b; logits = W2 W1 x + b. No
    nonlinearity, so gradients are closed-form."""

    def __init__(self, num_task=2, bn=False, bias=False):
        super().__init__()
        layers = [nn.Linear(2, 2, bias=False)] + ([nn.BatchNorm1d(2)] if bn else [])
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2, CPT * num_task, bias=bias)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.randn(2, 2, generator=g))
            self.head.weight.copy_(torch.randn(CPT * num_task, 2, generator=g))
            if bias:
                self.head.bias.copy_(torch.randn(CPT * num_task, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.features(x))


def batch():
    x = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4], [0.6, 0.9], [-0.2, -1.1]],
                     dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 2])  # task 0: samples 0-1, task 1: samples 2-4
    return x, y


def grads(W, X, labels, k):
    """dL/dW1, dL/dW2 (and dL/db) of mean BCE-with-logits on task k's slice, in closed form;
    W = (W1, W2) or (W1, W2, b)."""
    W1, W2 = W[:2]
    rows = slice(k * CPT, (k + 1) * CPT)
    Y = np.eye(CPT)[labels - k * CPT]
    H = X @ W1.T
    Z = H @ W2[rows].T + (W[2][rows] if len(W) == 3 else 0.0)
    dZ = (1.0 / (1.0 + np.exp(-Z)) - Y) / Z.size
    dW2 = np.zeros_like(W2)
    dW2[rows] = dZ.T @ H
    dW1 = (dZ @ W2[rows]).T @ X
    if len(W) == 2:
        return dW1, dW2
    db = np.zeros_like(W[2])
    db[rows] = dZ.sum(0)
    return dW1, dW2, db


SWITCH_VALUES = {"task_start": ("base", "previous"), "meta_target": ("mean", "last"),
                 "task_optimizer": ("per_task", "shared")}
COMBINATIONS = [dict(zip(SWITCH_VALUES, values)) for values in
                itertools.product(*SWITCH_VALUES.values())]


def cfg_for(cfg_factory, variant="paper", r=1, momentum=0.0, **switches):
    return cfg_factory(variant=variant, r=r, optimizer="sgd", lr=LR, momentum=momentum,
                       weight_decay=0.0, beta=1.0, num_class=4, class_per_task=CPT, num_task=2,
                       **switches)


def numpy_weights(model):
    """(W1, W2), or (W1, W2, b) for a head with a bias."""
    return tuple(p.detach().numpy().copy() for p in
                 [model.features[0].weight] + list(model.head.parameters()))


def expected(W, X, y, r, eta, task_start, meta_target, task_optimizer, mu=0.0, steps=1,
             r_newest=None, session=1):
    """``steps`` meta-steps of SGD (momentum ``mu``) on one batch, written out from the switches'
    definitions: tasks in increasing order, each from the base or from where the previous one
    stopped; one momentum buffer per task or one for all, kept across steps; then every weight
    ← lerp(base, fast, η), fast = (mean θ_k, each task's φ_k rows and bias) or the last task's.
    Task ``session`` (the newest) takes ``r_newest`` steps where given, the others r."""
    tasks = sorted(set((y // CPT).tolist()))
    buffers = {}
    for _ in range(steps):
        live = [w.copy() for w in W]
        fast = [np.zeros_like(W[0])] + [w.copy() for w in W[1:]]
        for k in tasks:
            if task_start == "base":
                live = [w.copy() for w in W]
            key = k if task_optimizer == "per_task" else "shared"
            m = (y // CPT) == k
            for _ in range(r_newest if r_newest is not None and k == session else r):
                g = grads(live, X[m], y[m], k)
                v = g if key not in buffers else [mu * b + gi for b, gi in zip(buffers[key], g)]
                buffers[key] = v
                live = [w - LR * vi for w, vi in zip(live, v)]
            rows = slice(k * CPT, (k + 1) * CPT)
            fast[0] += live[0] / len(tasks)
            for f, w in zip(fast[1:], live[1:]):  # the head's rows and bias entries of task k
                f[rows] = w[rows]
        if meta_target == "last":
            fast = live
        W = [(1 - eta) * w + eta * f for w, f in zip(W, fast)]
    return W


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("switches", COMBINATIONS, ids=lambda c: "-".join(c.values()))
def test_meta_step_matches_hand_computation_for_every_switch(cfg_factory, switches, r, bias):
    """Two meta-steps with SGD momentum (so that a shared optimizer state shows), every combination
    of the three training switches, a head with and without a bias."""
    model = Tiny(bias=bias)
    W = numpy_weights(model)
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, r=r, momentum=0.9, **switches), session=1)
    assert learner.eta == pytest.approx(math.exp(-0.5))
    for _ in range(2):
        learner.meta_step(x, y)
    want = expected(W, x.numpy(), y.numpy(), r, learner.eta, mu=0.9, steps=2, **switches)
    for got, w in zip(numpy_weights(model), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-12)
    shared = switches["task_optimizer"] == "shared"
    assert sorted(learner.optimizers, key=str) == (["shared"] if shared else [0, 1])


@pytest.mark.parametrize("switches", [COMBINATIONS[0], COMBINATIONS[-1]],
                         ids=lambda c: "-".join(c.values()))
def test_the_newest_task_takes_its_own_number_of_steps(cfg_factory, switches):
    """args.r_newest: the session's newest task (task 1 in session 1) takes 3 inner steps, the older
    one r = 1 (the release's SVHN session 4, with 4 and 1)."""
    model = Tiny(bias=True)
    W = numpy_weights(model)
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, r=1, momentum=0.9, r_newest=3, **switches),
                          session=1)
    assert [learner.steps(k) for k in (0, 1)] == [1, 3]
    learner.meta_step(x, y)
    want = expected(W, x.numpy(), y.numpy(), 1, learner.eta, mu=0.9, r_newest=3, **switches)
    for got, w in zip(numpy_weights(model), want):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-12)
    every = expected(W, x.numpy(), y.numpy(), 3, learner.eta, mu=0.9, **switches)
    assert max(np.abs(u - v).max() for u, v in zip(want, every)) > 1e-4  # not r = 3 for all


@pytest.mark.parametrize("name", sorted(SWITCH_VALUES))
def test_each_switch_alone_changes_the_update(cfg_factory, name):
    """The learner with one switch flipped from the paper's value ends elsewhere on the setting of
    the test above, so a learner that ignored the switch fails here even if the oracle, which the
    test above holds it to, were blind to that switch on this batch."""
    paper = {k: v[0] for k, v in SWITCH_VALUES.items()}
    ends = []
    for switches in (paper, dict(paper, **{name: SWITCH_VALUES[name][1]})):
        model = Tiny(bias=True)
        learner = MetaLearner(model, cfg_for(cfg_factory, momentum=0.9, **switches), session=1)
        for _ in range(2):
            learner.meta_step(*batch())
        ends.append(numpy_weights(model))
    assert max(np.abs(u - v).max() for u, v in zip(*ends)) > 1e-4


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_variants_are_presets_of_the_switches(cfg_factory, variant):
    cfg = cfg_for(cfg_factory, variant)
    want = {"paper": ("base", "mean", "per_task", False),
            "official": ("previous", "last", "shared", True)}[variant]
    assert (cfg.task_start, cfg.meta_target, cfg.task_optimizer, cfg.batch_forward) == want
    alone = cfg_for(cfg_factory, variant, task_start="previous" if variant == "paper" else "base")
    assert (alone.meta_target, alone.task_optimizer) == want[1:3]  # the others keep the preset


def test_paper_absent_task_keeps_base_rows_and_bias(cfg_factory):
    model = Tiny(num_task=3, bias=True)
    cfg = cfg_factory(variant="paper", r=1, optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.1,
                      beta=1.0, num_class=6, class_per_task=CPT, num_task=3)
    before = [model.head.weight.detach().clone(), model.head.bias.detach().clone()]
    x = torch.tensor([[1.0, 0.5], [0.2, -0.7], [0.4, 0.4]], dtype=torch.float64)
    MetaLearner(model, cfg, session=2).meta_step(x, torch.tensor([0, 5, 4]))  # tasks 0 and 2
    for after, old in zip([model.head.weight.detach(), model.head.bias.detach()], before):
        assert torch.equal(after[2:4], old[2:4])     # task 1 absent: untouched (even by decay)
        assert not torch.equal(after[0:2], old[0:2])
        assert not torch.equal(after[4:6], old[4:6])


def test_eta_first_session_is_one_and_decays():
    assert eta_for(1.0, 0, 10) == 1.0
    assert eta_for(0.5, 4, 5) == pytest.approx(math.exp(-0.4))
    assert eta_for(1.0, 9, 10) < eta_for(1.0, 1, 10)


def test_session0_paper_step_is_plain_sgd_on_single_task(cfg_factory):
    """η = 1 and one task: the meta-update leaves exactly the inner-loop result."""
    model = Tiny()
    W = numpy_weights(model)
    x, y = batch()
    m = y < 2
    MetaLearner(model, cfg_for(cfg_factory, "paper", 1), session=0).meta_step(x[m], y[m])
    g = grads(W, x[m].numpy(), y[m].numpy(), 0)
    for got, w, gi in zip(numpy_weights(model), W, g):
        np.testing.assert_allclose(got, w - LR * gi, atol=1e-12)


def test_official_shares_one_optimizer(cfg_factory):
    learner = MetaLearner(Tiny(), cfg_for(cfg_factory, "official", 1, momentum=0.9), session=1)
    learner.meta_step(*batch())
    assert list(learner.optimizers) == ["shared"]


@pytest.mark.parametrize("batch_forward", [False, True])
@pytest.mark.parametrize("meta_target", ["mean", "last"])
def test_batchnorm_statistics_follow_the_switches(cfg_factory, meta_target, batch_forward):
    """Tasks from the base (r = 1: each task's forward sees the base weights). batch_forward first
    moves the statistics by the whole batch's mean; "mean" interpolates towards the tasks' mean
    statistics, "last" keeps the last task's as they are (the release never interpolated them)."""
    model = Tiny(bn=True)
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -0.25], dtype=torch.float64))
    rm = bn.running_mean.clone().numpy()
    W1 = model.features[0].weight.detach().numpy().copy()
    x, y = batch()
    X, Y = x.numpy(), y.numpy()
    learner = MetaLearner(model, cfg_for(cfg_factory, "paper", 1, task_start="base",
                                         meta_target=meta_target, batch_forward=batch_forward),
                          session=1)
    learner.meta_step(x, y)
    step = lambda stats, rows: (1 - bn.momentum) * stats + bn.momentum * (X[rows] @ W1.T).mean(0)
    if batch_forward:
        rm = step(rm, slice(None))  # the whole mini-batch, before the tasks: part of the base
    fast = [step(rm, (Y // CPT) == k) for k in (0, 1)]
    want = (1 - learner.eta) * rm + learner.eta * np.mean(fast, axis=0) if meta_target == "mean" \
        else fast[-1]
    np.testing.assert_allclose(bn.running_mean.numpy(), want, atol=1e-12)
    assert int(bn.num_batches_tracked) == 2 + batch_forward


def test_batch_forward_moves_no_weight(cfg_factory):
    """The release's extra forward changes BatchNorm statistics only: with r = 1 and one task, the
    weights equal those of a step without it, whose forward saw the same weights."""
    x, y = batch()
    m = y < 2
    results = []
    for batch_forward in (False, True):
        model = Tiny(bn=True)
        MetaLearner(model, cfg_for(cfg_factory, "paper", 1, batch_forward=batch_forward),
                    session=1).meta_step(x[m], y[m])
        results.append(model)
    # Training-mode BatchNorm normalises with the batch's own statistics, not the running ones,
    # so the forward's changed running statistics cannot change the gradients.
    for a, b in zip(results[0].parameters(), results[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(results[0].features[1].running_mean,
                           results[1].features[1].running_mean)


class ConvNorms(nn.Module):
    """A 2×2 map through a BatchNorm, then a 1×1 map through another."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2),
                                      nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(2), nn.Flatten())
        self.head = nn.Linear(2, 4)


def test_one_sample_keeps_batch_statistics_where_a_channel_has_several_values():
    """One image: the BatchNorm on its 2×2 map normalises with that map's statistics and moves its
    running statistics (as the release's train mode did); the BatchNorm on the 1×1 map, one value
    a channel, uses and keeps its running statistics. Both are in training mode afterwards."""
    torch.manual_seed(0)
    net = ConvNorms().train()
    conv, map_norm, _, vector_norm, _ = net.features
    before = [map_norm.running_mean.clone(), vector_norm.running_mean.clone()]
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net.features(x)  # unguarded, the 1×1 map cannot be normalised
    with single_sample_guard(net, 1):
        out = net.features(x)
    with torch.no_grad():
        h = conv(x)
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
        normed = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + map_norm.eps)
        pooled = normed.mean(dim=(2, 3))  # γ = 1, β = 0
        want = pooled / math.sqrt(1 + vector_norm.eps)  # running mean 0, var 1
    torch.testing.assert_close(out, want)
    assert not torch.equal(map_norm.running_mean, before[0])
    assert torch.equal(vector_norm.running_mean, before[1])
    assert map_norm.training and vector_norm.training


def test_task_with_one_sample_steps_on_running_statistics(cfg_factory):
    """BatchNorm1d raises on a training batch of one; the guard runs that task's step on the running
    statistics instead, so its sample still moves the weights and leaves the statistics as they were."""
    model = Tiny(bn=True)
    bn = model.features[1]
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(batch()[0][:1])
    x, y = batch()
    x, y = x[[0, 1, 2]], y[[0, 1, 2]]  # task 0: two samples, task 1: one sample
    W1 = model.features[0].weight.detach().numpy().copy()
    base_rm = bn.running_mean.clone().numpy()
    before = [p.detach().clone() for p in model.parameters()]
    learner = MetaLearner(model, cfg_for(cfg_factory, "paper", 1), session=1)
    learner.meta_step(x, y)
    assert model.training and bn.training  # the guard hands BatchNorm back in training mode
    h = x.numpy()[:2] @ W1.T
    fast_task0 = (1 - bn.momentum) * base_rm + bn.momentum * h.mean(0)
    want = (1 - learner.eta) * base_rm + learner.eta * (fast_task0 + base_rm) / 2  # task 1: base
    np.testing.assert_allclose(bn.running_mean.numpy(), want, atol=1e-12)
    head = model.head.weight.detach()
    assert not torch.equal(head[2:], before[-1][2:])  # task 1's single sample trained its rows


def test_single_sample_batch_alone_leaves_batchnorm_statistics(cfg_factory):
    model = Tiny(bn=True)
    bn = model.features[1]
    rm, count = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, "official", 1), session=1)
    learner.meta_step(x[:1], y[:1])
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.num_batches_tracked, count)
    assert bn.training


def test_task_loss_uses_only_the_task_slice():
    logits = torch.tensor([[9.0, 9.0, 0.3, -0.2]], requires_grad=True)
    loss = task_loss(logits, torch.tensor([2]), 1, CPT)
    want = -(math.log(1 / (1 + math.exp(-0.3))) + math.log(1 - 1 / (1 + math.exp(0.2)))) / 2
    assert loss.item() == pytest.approx(want)
    loss.backward()
    assert torch.equal(logits.grad[0, :2], torch.zeros(2))


def test_the_release_unused_prelu_stays_out_of_training(cfg_factory):
    """The reduced ResNet-18's frozen PReLU weight is no part of θ: the learner's buffer leaves it
    out, and a meta-step with weight decay (which would shrink a weight with a zero gradient) and
    the single update's Adam leave it at 0.25."""
    from resnet import ReducedResNet18
    torch.manual_seed(0)
    model = ReducedResNet18((3, 8, 8), 4)
    cfg = cfg_factory(variant="official", r=1, optimizer="sgd", lr=0.1, momentum=0.9,
                      weight_decay=0.5, beta=1.0, num_class=4, class_per_task=CPT, num_task=2)
    learner = MetaLearner(model, cfg, session=1)
    trained = sum(p.numel() for p in model.parameters()) - 1
    assert learner.weights.data.numel() == trained
    assert all(t is not model.unused_prelu.weight for t in learner.weights.tensors)
    conv = model.features.conv1.weight.detach().clone()
    learner.meta_step(torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 2]))
    assert model.unused_prelu.weight.item() == 0.25
    assert not torch.equal(model.features.conv1.weight, conv)  # the step did train θ
