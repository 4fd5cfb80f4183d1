"""The fast path changes no result: the meta-step against the straightforward reference, inference
against classifying every routed sample, the task split, the speed options and the on-device data."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import data_sources as S
import learner_task_itaml as L
from utils.run.epochs import train_session
import utils.data.augmentation as A
import utils.data.sources as SRC
import utils.fast.device as DV
import utils.inference as I
from incremental_dataloader import IncrementalData
from resnet import ReducedResNet18
from tests.support import fake_data as F
from tests.support.naive import NaiveMetaLearner, naive_evaluate
from utils.data.memory import ReplayMemory
from utils.errors import ConfigError
from utils.fast.gpu_data import TensorBatches

CPT, TASKS = 2, 3


def step_cfg(cfg_factory, variant, r, optimizer, channels_last=False):
    return cfg_factory(variant=variant, r=r, optimizer=optimizer, lr=0.01, momentum=0.9,
                       weight_decay=1e-3, beta=1.0, num_class=CPT * TASKS, class_per_task=CPT,
                       num_task=TASKS, channels_last=channels_last)


def cnn_batch(n=12, side=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side, side, generator=g)
    y = torch.tensor([0, 1, 4, 5, 4, 0, 5, 1, 4, 4, 5, 0])[:n]  # tasks 0 and 2, task 1 absent
    return x, y


def state(model):
    return {**dict(model.named_parameters()),
            **{k: b for k, b in model.named_buffers() if b.is_floating_point()}}


def two_steps(cfg_factory, variant, r, optimizer, channels_last=False, dtype=torch.float32):
    """Our learner and the naive one, two meta-steps each from the same CIFAR network (so the
    per-task optimizer states carry over); returns both models, the start and both losses."""
    torch.manual_seed(0)
    model = ReducedResNet18((3, 8, 8), CPT * TASKS).to(dtype)
    ours, ref = copy.deepcopy(model), copy.deepcopy(model)
    learner = L.MetaLearner(ours, step_cfg(cfg_factory, variant, r, optimizer, channels_last), 2)
    naive = NaiveMetaLearner(ref, step_cfg(cfg_factory, variant, r, optimizer), session=2)
    losses = []
    for seed in (0, 1):
        x, y = cnn_batch(seed=seed)
        losses.append((learner.meta_step(x.to(dtype), y).item(), naive.meta_step(x.to(dtype), y)))
    if variant == "paper":
        assert sorted(learner.optimizers) == sorted(naive.optimizers) == [0, 2]
    return ours, ref, model, losses


def assert_same_state(ours, ref, model, atol):
    ref_state = state(ref)
    for name, tensor in state(ours).items():
        torch.testing.assert_close(tensor, ref_state[name], rtol=0, atol=atol, msg=name)
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), model.parameters()))
    assert moved > 1e-3  # the steps did move the weights


@pytest.mark.parametrize("optimizer", ["radam", "sgd"])
@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("variant", ["paper", "official"])
def test_meta_step_matches_the_naive_reference(cfg_factory, variant, r, optimizer):
    """Float32 on the CPU: the same parameters and BatchNorm statistics to 1e-5."""
    ours, ref, model, losses = two_steps(cfg_factory, variant, r, optimizer)
    assert_same_state(ours, ref, model, atol=1e-5)
    for got, want in losses:
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_channels_last_changes_only_rounding(cfg_factory, variant):
    """In float64, so that no ReLU input sits near enough to zero for the other summation order
    to flip it (in float32 one flip can move a gradient by percents, in either layout)."""
    ours, ref, model, _ = two_steps(cfg_factory, variant, 2, "radam", channels_last=True,
                                    dtype=torch.float64)
    assert ours.features.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_state(ours, ref, model, atol=1e-10)


def test_meta_step_copies_no_model(cfg_factory, monkeypatch):
    """Φ_base is a snapshot of tensors: no deep copy, and the parameters stay the same tensors."""
    model = ReducedResNet18((3, 8, 8), CPT * TASKS)
    learner = L.MetaLearner(model, step_cfg(cfg_factory, "paper", 1, "radam"), session=2)
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("deep copy in meta_step"))
    storage = [p.data_ptr() for p in model.parameters()]
    learner.meta_step(*cnn_batch())
    assert [p.data_ptr() for p in model.parameters()] == storage


def test_optimizers_use_the_multi_tensor_implementation(cfg_factory):
    for name in ("sgd", "adam", "radam"):
        opt = L.make_optimizer(cfg_factory(optimizer=name), [nn.Parameter(torch.ones(2))], 0.1)
        assert opt.defaults["foreach"] is True


def test_split_by_task_equals_boolean_masks():
    x = torch.arange(10.0)[:, None].expand(10, 3)
    y = torch.tensor([7, 0, 5, 1, 6, 6, 0, 9, 4, 1])
    tasks, xs, ys = L.split_by_task(x, y, 2)
    assert tasks == [0, 2, 3, 4]
    for k, xk, yk in zip(tasks, xs, ys):
        mask = (y // 2) == k
        assert torch.equal(xk, x[mask]) and torch.equal(yk, y[mask])


def test_training_moves_the_model_to_channels_last(cfg_factory):
    model = ReducedResNet18((3, 8, 8), CPT * TASKS)
    L.MetaLearner(model, step_cfg(cfg_factory, "paper", 1, "sgd", channels_last=True), 2)
    conv = model.features.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    cfg = cfg_factory(channels_last=True)
    assert DV.to_input(torch.randn(2, 3, 8, 8), cfg, "cpu").is_contiguous(
        memory_format=torch.channels_last)
    assert DV.to_input(torch.randn(2, 5), cfg, "cpu").is_contiguous()  # only image batches change


def test_amp_autocasts_to_bfloat16(cfg_factory):
    cfg = cfg_factory()
    cfg.amp = True  # the GPU check is in check_args; the helper itself works on any device
    layer = nn.Linear(3, 2)
    with DV.autocast(cfg, "cpu"):
        assert layer(torch.randn(4, 3)).dtype == torch.bfloat16
    cfg.amp = False
    with DV.autocast(cfg, "cpu"):
        assert layer(torch.randn(4, 3)).dtype == torch.float32


def test_compile_wraps_the_inner_loop_forward(cfg_factory, monkeypatch):
    calls = []

    def fake_compile(module):
        calls.append(module)
        return lambda x: module(x) * 1.0
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = step_cfg(cfg_factory, "paper", 1, "sgd")
    cfg.compile = True
    model = ReducedResNet18((3, 8, 8), CPT * TASKS)
    learner = L.MetaLearner(model, cfg, session=2)
    assert calls == [model]
    seen = []
    learner.forward = lambda x: seen.append(len(x)) or model(x)
    learner.meta_step(*cnn_batch())
    assert sorted(seen) == [5, 7]  # task 0's and task 2's samples went through the compiled path


# ---------------------------------------------------------------- inference

def eval_setup(cfg_factory, adapt_epochs=1):
    cfg = cfg_factory(num_class=CPT * TASKS, class_per_task=CPT, num_task=TASKS, continuum=3,
                      adapt_epochs=adapt_epochs, adapt_batch=4, test_batch=5, memory=12)
    g = torch.Generator().manual_seed(3)
    train_labels = np.repeat(np.arange(CPT * TASKS), 4)
    test_labels = np.repeat(np.arange(CPT * TASKS), 6)
    train = SRC.TensorData(torch.randn(len(train_labels), 3, 8, 8, generator=g), train_labels)
    test = SRC.TensorData(torch.randn(len(test_labels), 3, 8, 8, generator=g), test_labels)
    source = SRC.Source(train, train, test, train.labels, test.labels, CPT * TASKS, (3, 8, 8))
    data = IncrementalData(cfg, source=source)
    memory = ReplayMemory(cfg.memory, "random", 0)
    memory.update(data, list(range(CPT * TASKS)), TASKS - 1)
    torch.manual_seed(2)
    return cfg, data, memory, ReducedResNet18((3, 8, 8), CPT * TASKS)


@pytest.mark.parametrize("session", [0, 2])
def test_evaluate_equals_classifying_every_routed_sample(cfg_factory, session):
    cfg, data, memory, model = eval_setup(cfg_factory)
    got = I.evaluate(model, data, memory, session, cfg, "cpu", seed=5)
    want = naive_evaluate(model, data, memory, session, cfg, "cpu", seed=5)
    assert got["per_task"] == want["per_task"]
    for name in I.PROTOCOLS:
        assert got[f"acc_{name}"] == want[f"acc_{name}"]
    if session:  # the case the shortcut is for: some samples are routed to other tasks
        assert got["task_prediction_acc_per_sample"] < 100.0


def test_evaluate_forwards_each_sample_once_besides_the_base(cfg_factory, monkeypatch):
    cfg, data, memory, model = eval_setup(cfg_factory)
    forwarded = []
    real = I.predict_logits

    def count(model_, loader, device, cfg_=None):
        logits, labels = real(model_, loader, device, cfg_)
        forwarded.append(len(labels))
        return logits, labels
    monkeypatch.setattr(I, "predict_logits", count)
    I.evaluate(model, data, memory, 2, cfg, "cpu")
    assert forwarded == [36, 12, 12, 12]  # the base pass, then each task's own test samples
    forwarded.clear()
    I.evaluate(model, data, memory, 0, cfg, "cpu")
    assert forwarded == [12]  # session 0: the base logits classify


# ---------------------------------------------------------------- options in args

@pytest.mark.parametrize("name", ["gpu_data", "amp", "compile"])
def test_gpu_options_need_a_gpu(cfg_factory, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"^args.{name} = True needs a GPU but no GPU is "
                                          rf"visible; set {name} = False or run on a GPU.$"):
        cfg_factory(dataset="cifar100", **{name: True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=rf"args.{name} = True needs a GPU but "
                                          r"args.device = 'cpu'"):
        cfg_factory(dataset="cifar100", device="cpu", **{name: True})
    assert getattr(cfg_factory(dataset="cifar100", device="cuda", **{name: True}), name)


def test_gpu_data_only_for_data_sets_in_memory(cfg_factory, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"args.gpu_data = True applies only to the data sets "
                                          r"held in memory \(mnist, digits, digits32, cifar100, "
                                          r"svhn\)"):
        cfg_factory(dataset="imagenet", gpu_data=True)


@pytest.mark.parametrize("name", ["channels_last", "amp", "compile", "gpu_data"])
def test_speed_options_are_booleans(cfg_factory, name):
    with pytest.raises(ConfigError, match=rf"args.{name} = 'yes' is invalid; it must be True or "
                                          "False"):
        cfg_factory(**{name: "yes"})
    assert getattr(cfg_factory(), name) is False  # the default keeps earlier args classes working


# ---------------------------------------------------------------- data held as tensors

def on_device_data(cfg_factory, dataset, data_path, **over):
    cfg = cfg_factory(dataset=dataset, data_path=str(data_path), **over)
    cfg.gpu_data, cfg.device = True, "cpu"  # the tensor path itself is device-agnostic
    return IncrementalData(cfg)


def write_in_memory(dataset, root, monkeypatch):
    if dataset == "digits32":  # ships with scikit-learn: nothing to write
        return dict(num_class=4, class_per_task=2, num_task=2, memory=8)
    if dataset == "cifar100":
        F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(str(root)))
        return dict(num_class=20, class_per_task=10, num_task=2, memory=20)
    F.point_torchvision_at_svhn(monkeypatch, F.write_svhn(str(root))[0])
    return dict(num_class=4, num_task=2, memory=8)


@pytest.fixture
def cifar(tmp_path, monkeypatch, cfg_factory):
    return on_device_data(cfg_factory, "cifar100", tmp_path,
                          **write_in_memory("cifar100", tmp_path, monkeypatch))


SETTINGS = [(d, s) for d in ("cifar100", "svhn", "digits32") for s in ("release", "corrected")]


@pytest.mark.parametrize("dataset, setting", SETTINGS)
def test_test_batches_equal_the_torchvision_transforms(dataset, setting, tmp_path, monkeypatch,
                                                       cfg_factory):
    data = on_device_data(cfg_factory, dataset, tmp_path, augmentation=setting,
                          **write_in_memory(dataset, tmp_path, monkeypatch))
    indices = data.seen_test_indices(1)
    loader = data.loader(data.test_set, indices, 7)
    assert isinstance(loader, TensorBatches) and len(loader) == -(-len(indices) // 7)
    x, y = map(torch.cat, zip(*loader))
    want = torch.stack([data.test_set[i][0] for i in indices])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-5)
    assert y.tolist() == [data.test_set[i][1] for i in indices] and y.device.type == "cpu"
    # one description of the augmentation feeds the torchvision transforms and the batches
    assert data.on_device[id(data.train_set)][2] is S.DATASETS[dataset].augment[setting]


def test_corrected_cifar_augmentation_is_a_padded_crop_and_maybe_a_flip(tmp_path, monkeypatch,
                                                                        cfg_factory):
    cifar = on_device_data(cfg_factory, "cifar100", tmp_path, augmentation="corrected",
                           **write_in_memory("cifar100", tmp_path, monkeypatch))
    indices = cifar.task_indices(0)
    loader = cifar.loader(cifar.train_set, indices, 8, shuffle=True, seed=3)
    plain = {i: cifar.train_plain[i][0] for i in indices}
    pad = (torch.zeros(3, 1, 1) - torch.tensor(S.CIFAR100_STATS[0])[:, None, None]) \
        / torch.tensor(S.CIFAR100_STATS[1])[:, None, None]  # zero pixels, normalised
    order = []
    for x, y in loader:
        for image, label in zip(x, y):
            candidates = [i for i in indices if cifar.train_set[i][1] == label]
            assert any(is_crop(image, plain[i], pad) for i in candidates)
        order.append(y)
    again = torch.cat([y for _, y in cifar.loader(cifar.train_set, indices, 8, shuffle=True, seed=3)])
    assert torch.equal(torch.cat(order), again)  # seeded
    assert sorted(torch.cat(order).tolist()) == sorted(cifar.train_labels[indices].tolist())
    second = torch.cat([y for _, y in loader])
    assert not torch.equal(torch.cat(order), second)  # a new order every epoch


def is_crop(image, original, pad, p=4):
    padded = torch.nn.functional.pad(original - pad, (p, p, p, p)) + pad
    for flipped in (image, image.flip(2)):
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                if torch.allclose(padded[:, dy:dy + 32, dx:dx + 32], flipped, atol=1e-5):
                    return True
    return False


@pytest.mark.parametrize("dataset", ["cifar100", "svhn", "digits32"])
def test_release_batches_hold_original_pixels_or_the_zero_fill(dataset, tmp_path, monkeypatch,
                                                               cfg_factory):
    """Crop, flip and rotation move pixels and fill with zeros on [0, 1] images, before the
    normalisation: unnormalised, every pixel is one of the image's own or black."""
    data = on_device_data(cfg_factory, dataset, tmp_path,
                          **write_in_memory(dataset, tmp_path, monkeypatch))
    mean, std = (torch.tensor(s)[:, None, None] for s in data.on_device[id(data.train_set)][3])
    indices = data.task_indices(0)
    originals = {i: pixels(data.on_device[id(data.train_plain)][0][i].float()) for i in indices}
    black = 0
    for x, y in data.loader(data.train_set, indices, 8, shuffle=True, seed=1):
        for image, label in zip(x, y):
            seen = pixels((image * std + mean) * 255)
            black += (0, 0, 0) in seen
            assert any(seen <= originals[i] | {(0, 0, 0)} for i in indices
                       if data.train_labels[i] == label)
    assert black > 0


def pixels(image):
    """The set of an image's RGB triples, on the 0..255 scale."""
    return set(map(tuple, image.round().to(torch.int64).flatten(1).T.tolist()))


# (args.augmentation, data set) -> (padding, flipped, degrees) each pipeline must draw from
IN_MEMORY = {("release", "cifar100"): (4, True, 10), ("release", "svhn"): (4, True, 10),
             ("release", "digits32"): (4, True, 10),
             ("corrected", "cifar100"): (4, True, 0), ("corrected", "svhn"): (2, False, 10),
             ("corrected", "digits32"): (2, False, 10)}


def coded_images(n, side=32):
    """Images whose pixels say where they come from: channel 0 the row, 1 the column, 2 the image,
    none of them zero."""
    x = torch.empty(n, 3, side, side)
    x[:, 0] = (torch.arange(side)[:, None] + 1.0) / 64
    x[:, 1] = (torch.arange(side)[None, :] + 1.0) / 64
    x[:, 2] = (torch.arange(n)[:, None, None] + 1.0) / 128
    return x


def fitted_motion(image, side=32):
    """The affine map from output to source position that best explains a coded image's non-zero
    pixels: (mirrored, rotation in degrees, source offset of the centre)."""
    filled = image.abs().sum(0) > 0
    rows, cols = filled.nonzero(as_tuple=True)
    src = torch.stack([image[0][filled] * 64 - 1, image[1][filled] * 64 - 1], 1).double()
    design = torch.stack([rows, cols, torch.ones_like(rows)], 1).double()
    a = torch.linalg.lstsq(design, src).solution.T  # src = a[:, :2] @ (row, col) + a[:, 2]
    centre = torch.full((2,), (side - 1) / 2, dtype=torch.double)
    offset = a[:, :2] @ centre + a[:, 2] - centre
    angle = math.degrees(math.atan2(abs(a[1, 0]), abs(a[0, 0])))
    return bool(torch.linalg.det(a[:, :2]) < 0), angle, offset


@pytest.mark.parametrize("setting, dataset", sorted(IN_MEMORY))
def test_augment_batch_draws_each_pipelines_crop_flip_and_rotation(setting, dataset):
    padding, flips, degrees = IN_MEMORY[setting, dataset]
    augment = S.DATASETS[dataset].augment[setting]
    images = coded_images(64)
    out = A.augment_batch(images, augment, torch.Generator().manual_seed(0))
    assert torch.equal(out, A.augment_batch(images, augment, torch.Generator().manual_seed(0)))
    # nearest neighbour: every pixel is one of the image's own (whole codes, its own number) or zero
    codes = out * torch.tensor([64.0, 64.0, 128.0])[:, None, None]
    whole = ((codes - codes.round()).abs() < 1e-4).all(1) & (codes[:, :2] >= 1).all(1) \
        & (codes[:, :2] <= 32).all(1) & (codes[:, 2] == torch.arange(1.0, 65.0)[:, None, None])
    assert (whole | (out == 0).all(1)).all()
    mirrored, angles, offsets = zip(*map(fitted_motion, out))
    assert set(mirrored) == ({True, False} if flips else {False})
    assert max(angles) <= degrees + 0.5 and max(angles) >= 0.7 * degrees
    shift = torch.stack(offsets).abs().max()
    assert padding - 0.5 < shift < padding + 0.5  # a crop of the image padded with `padding` zeros


def test_mnist_batches_are_the_held_tensors(tmp_path, cfg_factory):
    F.write_fake_mnist(tmp_path)
    data = on_device_data(cfg_factory, "mnist", tmp_path)
    indices = data.task_indices(1)
    x, y = next(iter(data.loader(data.train_set, indices, 100)))
    want = torch.stack([data.train_set[i][0] for i in indices])
    assert torch.equal(x, want) and y.tolist() == [data.train_set[i][1] for i in indices]


def test_a_session_trains_and_evaluates_on_held_tensors(cifar):
    cfg = cifar.cfg
    cfg.epochs, cfg.train_batch, cfg.test_batch, cfg.adapt_batch = 1, 16, 32, 8
    model = ReducedResNet18((3, 32, 32), cfg.num_class)
    memory = ReplayMemory(cfg.memory, "random", 0)
    for t in (0, 1):
        loss = train_session(L.MetaLearner(model, cfg, t), cifar.train_loader(t, memory, t)).final_loss
        memory.update(cifar, cifar.task_classes(t), t, model)
        results = I.evaluate(model, cifar, memory, t, cfg, "cpu")
        assert np.isfinite(loss) and results["num_test_samples"] == 20 * (t + 1)
