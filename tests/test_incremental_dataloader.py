"""Data sets, class order, tasks, loaders and the replay memory, through the real loading code."""
import urllib.error

import numpy as np
import pytest
import torch

import incremental_dataloader as D
import utils.data.memory as MEM
import utils.data.readers as R
import utils.data.sources as SRC
from tests.support.fake_data import write_fake_mnist
from utils.errors import ConfigError


def synthetic_source(num_class=6, per_class=10, test_per_class=4):
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(num_class), per_class)
    test_labels = np.repeat(np.arange(num_class), test_per_class)
    train = SRC.TensorData(torch.randn(len(labels), 3, generator=g), labels)
    test = SRC.TensorData(torch.randn(len(test_labels), 3, generator=g), test_labels)
    return SRC.Source(train, train, test, train.labels, test.labels, num_class, (3,))


# ------------------------------------------------------------------ data sets

def test_mnist_loads_through_torchvision(tmp_path, cfg_factory):
    raw = write_fake_mnist(tmp_path)
    cfg = cfg_factory(dataset="mnist", data_path=str(tmp_path))
    data = D.IncrementalData(cfg)
    assert len(data.train_set) == 30 and len(data.test_set) == 20
    x, y = data.train_set[4]
    assert x.shape == (1, 28, 28) and y == 1
    pixel = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8)[4 * 784]
    assert x[0, 0, 0].item() == pytest.approx((pixel / 255 - R.MNIST_MEAN) / R.MNIST_STD, abs=1e-5)
    assert data.input_shape == (1, 28, 28)


def test_mnist_missing_and_offline_names_data_path(tmp_path, cfg_factory, monkeypatch):
    import torchvision.datasets

    def offline(self):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    cfg = cfg_factory(dataset="mnist", data_path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"MNIST is not in args.data_path = '.*nowhere'.*MNIST/raw"):
        D.IncrementalData(cfg)


def test_mnist_corrupt_file_is_reported(tmp_path, cfg_factory):
    raw = write_fake_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="MNIST's training files .* corrupt"):
        D.IncrementalData(cfg_factory(dataset="mnist", data_path=str(tmp_path)))


def test_digits_split_is_stratified_and_seeded(cfg_factory):
    a = R.load_digits(cfg_factory(seed=0))
    b = R.load_digits(cfg_factory(seed=0))
    c = R.load_digits(cfg_factory(seed=1))
    assert len(a.train_labels) + len(a.test_labels) == 1797
    assert len(a.test_labels) == 360
    for cls in range(10):
        share = (a.test_labels == cls).sum() / ((a.train_labels == cls).sum() + (a.test_labels == cls).sum())
        assert 0.18 < share < 0.22
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)
    assert a.input_shape == (1, 8, 8)


def test_num_class_beyond_the_data_set(cfg_factory):
    cfg = cfg_factory(num_class=12, class_per_task=2, num_task=6, memory=100)
    with pytest.raises(ConfigError, match="args.num_class = 12 but digits has only 10 classes"):
        D.IncrementalData(cfg)


# ------------------------------------------------------------------ class order and tasks

def test_natural_order_and_tasks(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source())
    assert data.class_order == [0, 1, 2, 3, 4, 5]
    assert data.task_classes(1) == [2, 3]
    assert set(data.train_labels[data.task_indices(1)]) == {2, 3}
    assert len(data.task_indices(1)) == 20
    assert set(data.test_labels[data.seen_test_indices(1)]) == {0, 1, 2, 3}


def test_shuffled_order_is_a_seeded_permutation(cfg_factory):
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2, class_order="shuffled", seed=5)
    src = synthetic_source()
    order = D.IncrementalData(cfg, source=src).class_order
    assert order == np.random.RandomState(5).permutation(6).tolist()[:4]
    assert order == D.IncrementalData(cfg, source=src).class_order
    other = D.make_class_order("shuffled", 6, 6)
    assert sorted(other) == list(range(6)) and other != D.make_class_order("shuffled", 6, 5)
    data = D.IncrementalData(cfg, source=src)
    # A sample's label becomes its class's position in the order; classes outside the run get -1.
    for i in range(len(src.train_labels)):
        original = src.train_labels[i]
        want = order.index(original) if original in order else -1
        assert data.train_labels[i] == want
        if want >= 0:
            assert data.train_set[i][1] == want


def test_given_class_order_is_used(cfg_factory):
    cfg = cfg_factory(num_class=4, class_per_task=2, num_task=2)
    data = D.IncrementalData(cfg, class_order=[5, 3, 1, 0], source=synthetic_source())
    assert set(data.train_labels[data.task_indices(0)]) == {0, 1}
    assert sorted(np.flatnonzero(data.train_labels == 0) // 10) == [5] * 10


def test_train_loader_is_new_task_plus_memory(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3, train_batch=7)
    data = D.IncrementalData(cfg, source=synthetic_source())
    memory = MEM.ReplayMemory(6, seed=0)
    memory.update(data, [0, 1, 2, 3], session=1)
    labels = torch.cat([y for _, y in data.train_loader(2, memory, seed=0)]).numpy()
    assert len(labels) == 20 + 4
    assert sorted(np.bincount(labels, minlength=6).tolist()) == [1, 1, 1, 1, 10, 10]
    first = [y.tolist() for _, y in data.train_loader(2, memory, seed=3)]
    assert first == [y.tolist() for _, y in data.train_loader(2, memory, seed=3)]


# ------------------------------------------------------------------ replay memory

def test_memory_budget_split_equally_and_shrinks_by_prefix(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source(per_class=10))
    memory = MEM.ReplayMemory(12, "random", seed=1)
    history = []
    for t in range(3):
        memory.update(data, data.task_classes(t), session=t)
        history.append({c: v.copy() for c, v in memory.exemplars.items()})
        assert memory.classes() == list(range(2 * (t + 1)))
        assert len(memory) <= 12
        assert {len(v) for v in memory.exemplars.values()} == {12 // (2 * (t + 1))}
        for c, v in memory.exemplars.items():
            assert np.all(data.train_labels[v] == c) and len(set(v.tolist())) == len(v)
    for c in (0, 1):  # quotas 6 → 3 → 2: each time the first exemplars stay
        assert np.array_equal(history[1][c], history[0][c][:3])
        assert np.array_equal(history[2][c], history[0][c][:2])


def test_memory_quota_larger_than_a_class_takes_the_whole_class(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source(per_class=10))
    memory = MEM.ReplayMemory(100)
    memory.update(data, [0, 1], session=0)
    assert len(memory) == 20


def test_memory_random_selection_is_seeded(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source(per_class=10))
    picks = []
    for seed in (0, 0, 1):
        memory = MEM.ReplayMemory(6, seed=seed)
        memory.update(data, [0, 1], session=0)
        picks.append(memory.indices().tolist())
    assert picks[0] == picks[1] != picks[2]


def test_memory_first_selection_is_the_releases_data_set_order(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source(per_class=10))
    memory = MEM.ReplayMemory(8, "first")
    memory.update(data, [0, 1], session=0)
    assert memory.exemplars[0].tolist() == [0, 1, 2, 3]
    assert memory.exemplars[1].tolist() == [10, 11, 12, 13]
    memory.update(data, [2, 3], session=1)
    assert memory.exemplars[0].tolist() == [0, 1] and memory.exemplars[3].tolist() == [30, 31]


def test_memory_state_round_trip():
    memory = MEM.ReplayMemory(10, "herding", seed=4)
    memory.exemplars = {0: np.array([3, 1]), 1: np.array([7])}
    again = MEM.ReplayMemory.from_state(memory.state_dict())
    assert again.size == 10 and again.selection == "herding" and again.seed == 4
    assert {c: v.tolist() for c, v in again.exemplars.items()} == {0: [3, 1], 1: [7]}


def test_herding_tracks_the_class_mean():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    order = MEM.herding(feats, 3).tolist()
    # mean = (0.6, 0.6): the nearest sample comes first; then the one that pulls the running mean
    # back towards it; no sample twice.
    assert order[0] in (2, 3)
    assert order[1] == ({2, 3} - {order[0]}).pop()
    assert len(set(order)) == 3
    assert MEM.herding(feats, 10).tolist() == MEM.herding(feats, 4).tolist()


def test_herding_selection_uses_model_features(cfg_factory):
    cfg = cfg_factory(num_class=6, class_per_task=2, num_task=3)
    data = D.IncrementalData(cfg, source=synthetic_source(per_class=10))

    class Features(torch.nn.Module):
        def features(self, x):
            return x
    memory = MEM.ReplayMemory(4, "herding")
    memory.update(data, [0, 1], session=0, model=Features())
    for c in (0, 1):
        idx = data.class_indices(c)
        feats = torch.stack([data.train_plain[i][0] for i in idx])
        feats = feats / feats.norm(dim=1, keepdim=True)
        assert memory.exemplars[c].tolist() == idx[MEM.herding(feats, 2)].tolist()
