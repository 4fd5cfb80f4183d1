"""Exact arithmetic of Alg. 1 on a tiny linear model, against closed-form gradients in numpy."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from learner_task_itaml import MetaLearner, eta_for, lr_at, task_loss

LR = 0.3
CPT = 2


class Tiny(nn.Module):
    """θ = W1 (2×2), φ = W2 (2·T × 2); logits = W2 W1 x. No nonlinearity, so gradients are closed-form."""

    def __init__(self, num_task=2, bn=False):
        super().__init__()
        layers = [nn.Linear(2, 2, bias=False)] + ([nn.BatchNorm1d(2)] if bn else [])
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2, CPT * num_task, bias=False)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.randn(2, 2, generator=g))
            self.head.weight.copy_(torch.randn(CPT * num_task, 2, generator=g))
        self.double()

    def forward(self, x):
        return self.head(self.features(x))


def batch():
    x = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4], [0.6, 0.9], [-0.2, -1.1]],
                     dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 2])  # task 0: samples 0-1, task 1: samples 2-4
    return x, y


def grads(W1, W2, X, labels, k):
    """dL/dW1, dL/dW2 of mean BCE-with-logits on task k's slice, in closed form."""
    rows = slice(k * CPT, (k + 1) * CPT)
    Y = np.eye(CPT)[labels - k * CPT]
    H = X @ W1.T
    Z = H @ W2[rows].T
    dZ = (1.0 / (1.0 + np.exp(-Z)) - Y) / Z.size
    dW2 = np.zeros_like(W2)
    dW2[rows] = dZ.T @ H
    dW1 = (dZ @ W2[rows]).T @ X
    return dW1, dW2


def cfg_for(cfg_factory, variant, r, momentum=0.0):
    return cfg_factory(variant=variant, r=r, optimizer="sgd", lr=LR, momentum=momentum,
                       weight_decay=0.0, beta=1.0, num_class=4, class_per_task=CPT, num_task=2)


def numpy_weights(model):
    return (model.features[0].weight.detach().numpy().copy(),
            model.head.weight.detach().numpy().copy())


def expected_paper(W1, W2, X, y, r, eta):
    """Every task from the base, r SGD steps; θ ← lerp(θ, mean θ_k, η), rows k ← lerp(φ_k)."""
    tasks = sorted(set((y // CPT).tolist()))
    W1_fast, W2_new = np.zeros_like(W1), W2.copy()
    for k in tasks:
        m = (y // CPT) == k
        a, b = W1.copy(), W2.copy()
        for _ in range(r):
            g1, g2 = grads(a, b, X[m], y[m], k)
            a, b = a - LR * g1, b - LR * g2
        W1_fast += a / len(tasks)
        rows = slice(k * CPT, (k + 1) * CPT)
        W2_new[rows] = (1 - eta) * W2[rows] + eta * b[rows]
    return (1 - eta) * W1 + eta * W1_fast, W2_new


def expected_official(W1, W2, X, y, r, eta):
    """Tasks one after another from the live weights; everything ← lerp(base, last, η)."""
    a, b = W1.copy(), W2.copy()
    for k in sorted(set((y // CPT).tolist())):
        m = (y // CPT) == k
        for _ in range(r):
            g1, g2 = grads(a, b, X[m], y[m], k)
            a, b = a - LR * g1, b - LR * g2
    return (1 - eta) * W1 + eta * a, (1 - eta) * W2 + eta * b


@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("variant,expected", [("paper", expected_paper),
                                              ("official", expected_official)])
def test_meta_step_matches_hand_computation(cfg_factory, variant, expected, r):
    model = Tiny()
    W1, W2 = numpy_weights(model)
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, variant, r), session=1)
    assert learner.eta == pytest.approx(math.exp(-0.5))
    learner.meta_step(x, y)
    want1, want2 = expected(W1, W2, x.numpy(), y.numpy(), r, learner.eta)
    got1, got2 = numpy_weights(model)
    np.testing.assert_allclose(got1, want1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got2, want2, rtol=0, atol=1e-12)


def test_variants_differ(cfg_factory):
    """Guards the test above: the two updates are not the same arithmetic on this batch."""
    x, y = batch()
    W1, W2 = numpy_weights(Tiny())
    p1, p2 = expected_paper(W1, W2, x.numpy(), y.numpy(), 1, 0.6)
    o1, o2 = expected_official(W1, W2, x.numpy(), y.numpy(), 1, 0.6)
    assert np.abs(p1 - o1).max() > 1e-4 and np.abs(p2 - o2).max() > 1e-4


def test_paper_absent_task_keeps_base_rows(cfg_factory):
    model = Tiny(num_task=3)
    cfg = cfg_factory(variant="paper", r=1, optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.1,
                      beta=1.0, num_class=6, class_per_task=CPT, num_task=3)
    before = model.head.weight.detach().clone()
    x = torch.tensor([[1.0, 0.5], [0.2, -0.7], [0.4, 0.4]], dtype=torch.float64)
    MetaLearner(model, cfg, session=2).meta_step(x, torch.tensor([0, 5, 4]))  # tasks 0 and 2
    after = model.head.weight.detach()
    assert torch.equal(after[2:4], before[2:4])          # task 1 absent: untouched (even by decay)
    assert not torch.equal(after[0:2], before[0:2])
    assert not torch.equal(after[4:6], before[4:6])


def test_eta_first_session_is_one_and_decays():
    assert eta_for(1.0, 0, 10) == 1.0
    assert eta_for(0.5, 4, 5) == pytest.approx(math.exp(-0.4))
    assert eta_for(1.0, 9, 10) < eta_for(1.0, 1, 10)


def test_session0_paper_step_is_plain_sgd_on_single_task(cfg_factory):
    """η = 1 and one task: the meta-update leaves exactly the inner-loop result."""
    model = Tiny()
    W1, W2 = numpy_weights(model)
    x, y = batch()
    m = y < 2
    MetaLearner(model, cfg_for(cfg_factory, "paper", 1), session=0).meta_step(x[m], y[m])
    g1, g2 = grads(W1, W2, x[m].numpy(), y[m].numpy(), 0)
    np.testing.assert_allclose(numpy_weights(model)[0], W1 - LR * g1, atol=1e-12)
    np.testing.assert_allclose(numpy_weights(model)[1], W2 - LR * g2, atol=1e-12)


def test_paper_keeps_one_momentum_state_per_task(cfg_factory):
    """Two batches with SGD momentum: task k's step uses task k's own momentum buffer only."""
    mu = 0.9
    model = Tiny()
    W1, W2 = numpy_weights(model)
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, "paper", 1, momentum=mu), session=1)
    eta = learner.eta
    buf = {}
    for _ in range(2):
        learner.meta_step(x, y)
        W1_fast, W2_new = np.zeros_like(W1), W2.copy()
        for k in (0, 1):
            m = (y.numpy() // CPT) == k
            g1, g2 = grads(W1, W2, x.numpy()[m], y.numpy()[m], k)
            b1, b2 = (g1, g2) if k not in buf else (mu * buf[k][0] + g1, mu * buf[k][1] + g2)
            buf[k] = (b1, b2)
            W1_fast += (W1 - LR * b1) / 2
            rows = slice(k * CPT, (k + 1) * CPT)
            W2_new[rows] = (1 - eta) * W2[rows] + eta * (W2 - LR * b2)[rows]
        W1, W2 = (1 - eta) * W1 + eta * W1_fast, W2_new
    np.testing.assert_allclose(numpy_weights(model)[0], W1, atol=1e-12)
    np.testing.assert_allclose(numpy_weights(model)[1], W2, atol=1e-12)
    assert sorted(learner.optimizers) == [0, 1]


def test_official_shares_one_optimizer(cfg_factory):
    learner = MetaLearner(Tiny(), cfg_for(cfg_factory, "official", 1, momentum=0.9), session=1)
    learner.meta_step(*batch())
    assert list(learner.optimizers) == ["shared"]


def test_batchnorm_statistics_follow_the_interpolation(cfg_factory):
    model = Tiny(bn=True)
    bn = model.features[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -0.25], dtype=torch.float64))
    base_rm = bn.running_mean.clone().numpy()
    W1 = model.features[0].weight.detach().numpy().copy()
    x, y = batch()
    learner = MetaLearner(model, cfg_for(cfg_factory, "paper", 1), session=1)
    learner.meta_step(x, y)
    fast = []
    for k in (0, 1):
        h = x.numpy()[(y.numpy() // CPT) == k] @ W1.T
        fast.append((1 - bn.momentum) * base_rm + bn.momentum * h.mean(0))
    want = (1 - learner.eta) * base_rm + learner.eta * np.mean(fast, axis=0)
    np.testing.assert_allclose(bn.running_mean.numpy(), want, atol=1e-12)


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


def test_lr_schedule_steps_at_milestones(cfg_factory):
    cfg = cfg_factory(lr=0.1, gamma=0.5, schedule=[5, 10, 15])
    assert [lr_at(cfg, e) for e in (0, 4, 5, 9, 10, 15, 19)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125, 0.0125])


def test_training_shows_an_epoch_progress_bar(cfg_factory, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    x, y = batch()
    cfg = cfg_factory(variant="paper", r=1, optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0,
                      beta=1.0, num_class=4, class_per_task=CPT, num_task=2, epochs=3, schedule=[])
    MetaLearner(Tiny(), cfg, session=1).train_session([(x, y)], desc="session 1/1")
    shown = sys.stderr.getvalue()
    assert "session 1/1" in shown and "/3 [" in shown and "epoch/s" in shown and "loss=" in shown
