"""The learner's and the inference's pieces against the reference written from the paper alone
(tests/support/naive.py), one piece at a time, on tiny inputs: what the end-to-end comparisons in
tests/test_fast_path.py can miss (a single update too small to flip a prediction, continua whose
routing happens to agree, a task of one sample) shows up here."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import learner_task_itaml as L
import utils.data.sources as SRC
import utils.inference as I
from incremental_dataloader import IncrementalData
from tests.support import naive as N
from utils.data.memory import ReplayMemory

CPT, TASKS = 2, 3


class TinyNet(nn.Module):
    """A convolution with BatchNorm on its maps and BatchNorm on the pooled vector: one sample
    gives the second a single value per channel."""

    def __init__(self, bias=False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4),
                                      nn.ReLU())
        self.head = nn.Linear(4, CPT * TASKS, bias=bias)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_net(seed=0, bias=False, dtype=torch.float32):
    torch.manual_seed(seed)
    return TinyNet(bias).to(dtype)


def state(model):
    return {name: t for name, t in model.state_dict().items() if t.is_floating_point()}


def assert_same_state(got, want, atol):
    want = state(want)
    for name, t in state(got).items():
        torch.testing.assert_close(t, want[name], rtol=0, atol=atol, msg=name)


def assert_moved(model, start, least=1e-4):
    moved = max((a - b).abs().max().item() for a, b in zip(state(model).values(),
                                                            state(start).values()))
    assert moved > least


def test_eta_and_accuracy():
    for beta, t, T in ((1.0, 0, 10), (0.5, 3, 5), (1.0, 9, 10)):
        assert L.eta_for(beta, t, T) == N.eta(beta, t, T)
    pred, labels = torch.tensor([0, 3, 3, 5, 1, 1, 2]), torch.tensor([0, 3, 2, 5, 1, 4, 2])
    for n in range(1, len(labels) + 1):
        assert I.accuracy(pred[:n], labels[:n]) == N.percent(pred[:n], labels[:n])
    empty = torch.zeros(0, dtype=torch.long)
    assert np.isnan(I.accuracy(empty, empty)) and np.isnan(N.percent(empty, empty))


@pytest.mark.parametrize("k", range(TASKS))
def test_task_loss_and_its_gradient(k):
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(5, CPT * TASKS, generator=g, dtype=torch.float64) * 3
    y = k * CPT + torch.randint(0, CPT, (5,), generator=g)
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got, want = L.task_loss(ours, y, k, CPT), N.slice_bce(ref, y, k, CPT)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=1e-12)


def unequal_tasks(seed=0):
    """Tasks 0, 2 and 3 of four (task 1 absent) with 37, 23 and 41 samples, interleaved."""
    g = torch.Generator().manual_seed(seed)
    true_task = torch.tensor([0] * 37 + [2] * 23 + [3] * 41)
    return true_task[torch.randperm(len(true_task), generator=g)]


@pytest.mark.parametrize("size", [1, 2, 5, 20, 50])
def test_continua_and_their_tasks(size):
    true_task = unequal_tasks()
    logits = torch.randn(len(true_task), 4 * CPT, generator=torch.Generator().manual_seed(1))
    scores = I.task_scores(logits, 4, CPT)
    assert torch.equal(scores, N.max_logit_per_task(logits, 4, CPT))
    for seed in (0, 7):
        ids = I.continuum_ids(true_task, size, torch.Generator().manual_seed(seed))
        want = N.cut_continua(true_task, size, torch.Generator().manual_seed(seed))
        assert torch.equal(ids, want)
        routes = I.predict_tasks(scores, ids)
        assert torch.equal(routes, N.route_continua(scores, ids))
        if size > 1:  # the continuum matters: some sample goes elsewhere than on its own
            assert not torch.equal(routes, scores.argmax(1))


def one_sample_batch(seed=0):
    """Task 0 holds one sample, tasks 1 and 2 several."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([3, 4, 0, 5, 2, 4, 3, 5, 4])
    return torch.randn(len(y), 3, 6, 6, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_meta_step_with_a_one_sample_task_and_r_newest(cfg_factory, variant, bias):
    """BatchNorm on a one-sample task (the vector layer on its running statistics, the map layer
    on the sample's), and the newest task (2 of session 2) taking r_newest = 2 steps, in float64."""
    cfg = cfg_factory(variant=variant, r=1, r_newest=2, optimizer="sgd", lr=0.05, momentum=0.9,
                      weight_decay=1e-3, beta=1.0, num_class=CPT * TASKS, class_per_task=CPT,
                      num_task=TASKS)
    start = tiny_net(bias=bias, dtype=torch.float64)
    ours, ref = tiny_net(bias=bias, dtype=torch.float64), tiny_net(bias=bias, dtype=torch.float64)
    learner, naive = L.MetaLearner(ours, cfg, session=2), N.NaiveMetaLearner(ref, cfg, session=2)
    for seed in (0, 1):
        x, y = one_sample_batch(seed)
        assert learner.meta_step(x, y).item() == pytest.approx(naive.meta_step(x, y), abs=1e-12)
    learner.finish()
    assert_same_state(ours, ref, atol=1e-10)
    assert_moved(ours, start)


def inference_setup(cfg_factory, adapt_bn="release"):
    """Three tasks of two classes, each class a random image plus noise: four training images a
    class (their exemplars too, so four a task, adapted in batches of three and the last holds one
    sample) and six test images. The training images take more noise from the global generator,
    as torchvision's transforms draw from it."""
    cfg = cfg_factory(num_class=CPT * TASKS, class_per_task=CPT, num_task=TASKS, continuum=3,
                      adapt_epochs=2, adapt_batch=3, adapt_lr=1e-2, adapt_bn=adapt_bn,
                      test_batch=5, memory=12)
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(CPT * TASKS, 3, 6, 6, generator=g)

    def images(per_class):
        labels = np.repeat(np.arange(CPT * TASKS), per_class)
        return centres[labels] + 2 * torch.randn(len(labels), 3, 6, 6, generator=g), labels
    (x, labels), (x_test, labels_test) = images(4), images(6)
    noisy = SRC.TensorData(x, labels, transform=lambda image: image + 0.3 * torch.randn_like(image))
    plain, test = SRC.TensorData(x, labels), SRC.TensorData(x_test, labels_test)
    source = SRC.Source(noisy, plain, test, plain.labels, test.labels, CPT * TASKS, (3, 6, 6))
    data = IncrementalData(cfg, source=source)
    memory = ReplayMemory(cfg.memory, "random", 0)
    memory.update(data, list(range(CPT * TASKS)), TASKS - 1)
    return cfg, data, memory


def trained_net(data):
    """TinyNet fitted a little to the plain training images (plain SGD on the softmax loss), so
    that its task scores vary from sample to sample and the single update changes its picks."""
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    everything = np.arange(len(data.train_labels))
    x, y = next(iter(data.loader(data.train_plain, everything, len(everything))))
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("adapt_bn", ["release", "reestimate"])
def test_single_update(cfg_factory, adapt_bn):
    """The adapted copy of each task: its weights and BatchNorm statistics; the model itself and
    the caller's random draws stay as they were."""
    cfg, data, memory = inference_setup(cfg_factory, adapt_bn)
    model = trained_net(data)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    for k in range(TASKS):
        torch.manual_seed(11)
        got = I.adapt(model, data, memory, k, cfg, "cpu", seed=5 + k)
        after_ours = torch.rand(1)
        torch.manual_seed(11)
        want = N.single_update(model, data, memory, k, cfg, "cpu", seed=5 + k)
        assert torch.equal(after_ours, torch.rand(1))
        assert_same_state(got, want, atol=1e-6)
        assert_moved(got, model, least=1e-3)
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name


def test_evaluate_on_a_model_whose_routes_and_updates_matter(cfg_factory):
    """The four protocols against the reference where the continua route some samples elsewhere
    than their own scores would, to the wrong task too, and the single update changes picks."""
    cfg, data, memory = inference_setup(cfg_factory)
    model = trained_net(data)
    indices = data.seen_test_indices(TASKS - 1)
    logits, labels = N.logits_of(model, data.loader(data.test_set, indices, 5), "cpu")
    true_task, scores = labels // CPT, N.max_logit_per_task(logits, TASKS, CPT)
    routes = N.route_continua(scores, N.cut_continua(true_task, cfg.continuum,
                                                     torch.Generator().manual_seed(5)))
    assert (routes != scores.argmax(1)).any() and (routes != true_task).any()
    adapted = N.single_update(model, data, memory, 1, cfg, "cpu", seed=6)
    after, _ = N.logits_of(adapted, data.loader(data.test_set, indices, 5), "cpu")
    assert (after[:, 2:4].argmax(1) != logits[:, 2:4].argmax(1)).any()
    got = I.evaluate(model, data, memory, TASKS - 1, cfg, "cpu", seed=5)
    want = N.naive_evaluate(model, data, memory, TASKS - 1, cfg, "cpu", seed=5)
    assert got["per_task"] == want["per_task"]
    for name in I.PROTOCOLS:
        assert got[f"acc_{name}"] == want[f"acc_{name}"], name
    assert want["acc_task_agnostic"] != want["acc_per_sample"]
