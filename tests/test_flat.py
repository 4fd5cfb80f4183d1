"""utils/fast/flat.py: weights as views of one buffer, and the learner that keeps Φ there."""
import copy

import pytest
import torch
import torch.nn as nn

import learner_task_itaml as L
from utils.run.epochs import train_session
from resnet import ReducedResNet18
from utils.fast.flat import FlatBuffer


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 6))


def test_tensors_become_views_with_their_values_shapes_and_strides():
    net = small_net().to(memory_format=torch.channels_last)
    before = {n: (p.detach().clone(), p.shape, p.stride()) for n, p in net.named_parameters()}
    params = list(net.parameters())
    flat = FlatBuffer(params)
    assert flat.data.numel() == sum(p.numel() for p in params)
    start, end = flat.data.data_ptr(), flat.data.data_ptr() + flat.data.numel() * 4
    for name, p in net.named_parameters():
        value, shape, stride = before[name]
        assert p.shape == shape and p.stride() == stride  # channels_last conv weight included
        assert torch.equal(p.detach(), value)
        assert start <= p.data_ptr() < end
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        flat.data.add_(1.0)  # one write to the buffer reaches every parameter
    for name, p in net.named_parameters():
        assert torch.equal(p.detach(), before[name][0] + 1.0)


def test_views_lays_out_another_tensor_like_the_buffer():
    net = small_net()
    flat = FlatBuffer(net.parameters())
    other = torch.arange(flat.data.numel(), dtype=torch.float32)
    views = flat.views(other)
    assert [v.shape for v in views] == [p.shape for p in net.parameters()]
    assert torch.equal(torch.cat([v.reshape(-1) for v in views]), other)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=5e-4, foreach=True),
    lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True),
])
def test_stepping_the_buffer_is_stepping_every_tensor(make):
    ours, ref = small_net(), small_net()
    flat = FlatBuffer(ours.parameters())
    grads = torch.zeros_like(flat.data)
    flat.data.grad = grads
    opt_ours, opt_ref = make([flat.data]), make(list(ref.parameters()))
    x = torch.randn(5, 3, 6, 6)
    for _ in range(3):
        grads.zero_()
        for p, g in zip(ours.parameters(), flat.views(grads)):
            p.grad = g
        ours(x).square().mean().backward()
        opt_ref.zero_grad()
        ref(x).square().mean().backward()
        opt_ours.step()
        opt_ref.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_attach_and_release():
    net = small_net()
    flat = FlatBuffer(net.parameters())
    assert flat.attached()
    weight = net[0].weight
    weight.data = weight.data.clone() + 2.0  # e.g. a model.to(...) elsewhere
    assert not flat.attached()
    flat.attach()
    assert flat.attached() and torch.equal(flat.views(flat.data)[0], weight.detach())
    flat.unflatten()
    assert not flat.attached()
    with torch.no_grad():
        flat.data.zero_()
    assert weight.detach().abs().sum() > 0  # its own memory now


def test_mixed_dtypes_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="one dtype and device"):
        FlatBuffer([torch.zeros(3), torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(ValueError, match="no parameters"):
        FlatBuffer([], "parameter")


# ---------------------------------------------------------------- the learner on the buffer

def _learner(cfg_factory, model, variant="paper"):
    cfg = cfg_factory(dataset="cifar100", num_class=20, class_per_task=5, num_task=4,
                      variant=variant, r=1, optimizer="radam", lr=0.01, channels_last=True)
    return L.MetaLearner(model, cfg, session=2)


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(12, 3, 8, 8, generator=g), torch.tensor([0, 1, 5, 6, 7, 10, 11, 12, 0, 5,
                                                                 10, 11])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_a_zero_grad_elsewhere_or_a_release_between_steps_changes_nothing(cfg_factory, variant):
    torch.manual_seed(0)
    model = ReducedResNet18((3, 8, 8), 20)
    a, b = _learner(cfg_factory, copy.deepcopy(model), variant), \
        _learner(cfg_factory, copy.deepcopy(model), variant)
    x, y = _batch()
    for step in range(3):
        a.meta_step(x, y)
        b.meta_step(x, y)
        b.model.zero_grad(set_to_none=True)  # would leave the gradient buffer unread if not undone
        if step == 1:
            b.finish()  # the next step puts the weights back in the buffer
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.model.buffers(), b.model.buffers()):
        assert torch.equal(p, q)


def test_train_session_hands_back_weights_of_their_own(cfg_factory):
    torch.manual_seed(0)
    learner = _learner(cfg_factory, ReducedResNet18((3, 8, 8), 20))
    learner.cfg.epochs = 1
    train_session(learner, [_batch()])
    assert not learner.weights.attached() and not learner.running.attached()
    assert all(p.grad is None for p in learner.model.parameters())
    storages = {p.untyped_storage().data_ptr() for p in learner.model.parameters()}
    assert len(storages) == len(list(learner.model.parameters()))
    assert learner.model.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
