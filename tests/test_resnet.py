"""The paper's networks: the release's parameter counts, layouts and initialisation, shapes and the
θ/φ split."""
import math

import pytest
import torch

from data_sources import DATASETS, build_network
from resnet import (MLP, CelebResNet18, PowerMeanPool, ReducedResNet18, ResNet18,
                    load_release_state_dict)
from utils.errors import ConfigError

# a small input for each data set name (ResNet-18 at 32/64 px to keep the tests fast)
SHAPES = {"mnist": (1, 28, 28), "digits": (1, 8, 8), "digits32": (3, 32, 32),
          "cifar100": (3, 32, 32), "svhn": (3, 32, 32),
          "imagenet": (3, 64, 64), "celeb": (3, 32, 32), "cub200": (3, 32, 32)}
FEATURE_DIM = {MLP: 400, ReducedResNet18: 170, ResNet18: 512, CelebResNet18: 512}
HEAD_BIAS = {"celeb"}  # the release's MS-Celeb head has a bias; every other head has none


def count(module):
    return sum(p.numel() for p in module.parameters())


def trained(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("dataset,shape,in_features", [("mnist", (1, 28, 28), 784),
                                                      ("digits", (1, 8, 8), 64)])
def test_mlp_784_400_400_with_bias_free_head(dataset, shape, in_features):
    net = build_network(dataset, shape, 10)
    assert isinstance(net, MLP)
    linears = [m for m in net.features if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(in_features, 400), (400, 400)]
    assert net.head.bias is None and tuple(net.head.weight.shape) == (10, 400)
    assert net(torch.randn(5, *shape)).shape == (5, 10)
    assert net.features(torch.randn(5, *shape)).shape == (5, 400)


def test_head_rows_are_the_logits():
    net = build_network("digits", (1, 8, 8), 4)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(net(x), net.features(x) @ net.head.weight.T)


def test_unknown_network():
    with pytest.raises(ConfigError, match="no data set is called 'places365'"):
        build_network("places365", (3, 32, 32), 365)


def test_every_data_set_has_a_network():
    networks = {name: spec.network for name, spec in DATASETS.items()}
    assert set(networks) == set(SHAPES)
    assert {networks[d] for d in ("cifar100", "svhn", "digits32")} == {ReducedResNet18}
    assert {networks[d] for d in ("imagenet", "cub200")} == {ResNet18}
    assert networks["celeb"] is CelebResNet18 and {networks["mnist"], networks["digits"]} == {MLP}


@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_shapes_split_and_head(dataset):
    torch.manual_seed(0)
    net = build_network(dataset, SHAPES[dataset], 7).eval()
    dim = FEATURE_DIM[type(net)]
    assert tuple(net.head.weight.shape) == (7, dim)
    assert (net.head.bias is not None) == (dataset in HEAD_BIAS)
    if net.head.bias is not None:
        assert tuple(net.head.bias.shape) == (7,)  # one entry a class: split by task like the rows
    x = torch.randn(2, *SHAPES[dataset])
    with torch.no_grad():
        feats, logits = net.features(x), net(x)
    assert feats.shape == (2, dim) and logits.shape == (2, 7)
    assert torch.equal(net.head(feats), logits)
    # φ is the head alone: every other parameter that trains belongs to θ, and the one that does not
    # is the release's unused PReLU weight of the reduced ResNet-18
    assert trained(net) == count(net.features) + count(net.head)
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen == (["unused_prelu.weight"] if isinstance(net, ReducedResNet18) else [])


def reduced_resnet18_parameters(c_in, widths, num_class):
    """Parameters of the release's reduced ResNet-18 by kind, from its architecture: 3×3 convs with
    biases, BN (γ, β), 1×1 projections with bias + BN where the width changes, the unused PReLU's one
    weight and the bias-free head."""
    conv3, conv1, bn = (lambda i, o: 9 * i * o + o), (lambda i, o: i * o + o), (lambda c: 2 * c)
    kinds = {"3x3 convolutions": conv3(c_in, widths[0]), "BatchNorm": bn(widths[0]),  # stem
             "1x1 projections": 0, "unused PReLU": 1, "head": widths[-1] * num_class}
    previous = widths[0]
    for w in widths:
        for block in range(2):
            i = previous if block == 0 else w
            kinds["3x3 convolutions"] += conv3(i, w) + conv3(w, w)
            kinds["BatchNorm"] += bn(w) + bn(w)
            if i != w:
                kinds["1x1 projections"] += conv1(i, w)
                kinds["BatchNorm"] += bn(w)
        previous = w
    return kinds


def parameters_by_kind(net):
    """The same count read off a built network's modules."""
    kinds = dict.fromkeys(["3x3 convolutions", "BatchNorm", "1x1 projections", "unused PReLU",
                           "head"], 0)
    for m in net.modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, torch.nn.Conv2d):
            kinds["3x3 convolutions" if m.kernel_size == (3, 3) else "1x1 projections"] += own
        elif isinstance(m, torch.nn.BatchNorm2d):
            kinds["BatchNorm"] += own
        elif isinstance(m, torch.nn.PReLU):
            kinds["unused PReLU"] += own
        elif m is net.head:
            kinds["head"] += own
        else:
            assert own == 0, f"a parameter of {type(m).__name__} is not accounted for"
    return kinds


# Counted from the release's own network definitions (the issue that asked for them, and PAPER.md).
RELEASE_COUNTS = [("cifar100", (3, 32, 32), 100, 1_250_237),
                  ("svhn", (3, 32, 32), 10, 1_234_937),
                  ("celeb", (3, 112, 112), 10_000, 16_306_512),
                  ("mnist", (1, 28, 28), 10, 478_400)]


@pytest.mark.parametrize("dataset,shape,num_class,want", RELEASE_COUNTS)
def test_parameter_counts_are_the_releases(dataset, shape, num_class, want):
    got = count(build_network(dataset, shape, num_class))
    print(f"{dataset}: {got:,} parameters with {num_class} classes (release: {want:,})")
    assert got == want


@pytest.mark.parametrize("num_class", [10, 100])
def test_reduced_resnet18_parameter_count_from_its_layers(num_class):
    """What each of the 1,250,237 (100 classes) or 1,234,937 (10) parameters is."""
    net = ReducedResNet18((3, 32, 32), num_class)
    kinds = parameters_by_kind(net)
    print(f"{num_class} classes: " + ", ".join(f"{k} {v:,}" for k, v in kinds.items()))
    assert kinds == reduced_resnet18_parameters(3, (21, 42, 85, 170), num_class)
    assert kinds == {"3x3 convolutions": 1_210_857, "BatchNorm": 3_180, "1x1 projections": 19_199,
                     "unused PReLU": 1, "head": 170 * num_class}
    assert sum(kinds.values()) == count(net) == {10: 1_234_937, 100: 1_250_237}[num_class]
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is not None for m in convs)


def test_reduced_resnet18_projection_shortcut_ends_in_a_relu():
    net = ReducedResNet18((3, 32, 32), 10).eval()
    for name in ("layer2", "layer3", "layer4"):
        shortcut = getattr(net.features, name)[0].shortcut
        assert [type(m) for m in shortcut] == [torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                               torch.nn.ReLU]
        assert shortcut[0].kernel_size == (1, 1) and shortcut[0].bias is not None
        with torch.no_grad():
            assert shortcut(torch.randn(2, shortcut[0].in_channels, 4, 4)).min() >= 0
    assert len(net.features.layer1[0].shortcut) == 0  # same width: the identity


def kurtosis(w):
    w = w.flatten().double()
    w = w - w.mean()
    return ((w ** 4).mean() / (w ** 2).mean() ** 2).item()


@pytest.mark.parametrize("dataset,shape", [("cifar100", (3, 32, 32)), ("celeb", (3, 32, 32))])
def test_convolutions_are_kaiming_normal_fan_out_and_batchnorm_one_zero(dataset, shape):
    """The release's initialisation: std √(2 / fan_out) and a normal's kurtosis of 3 (PyTorch's
    default is uniform, std 1/√(3·fan_in), kurtosis 1.8), BatchNorm γ = 1 and β = 0."""
    torch.manual_seed(0)
    net = build_network(dataset, shape, 10)
    big = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.numel() > 20_000]
    assert big
    for conv in big:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
        assert kurtosis(conv.weight) == pytest.approx(3.0, abs=0.3)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_celeb_network_is_torchvisions_resnet18_with_its_max_pool_and_head_bias():
    net = CelebResNet18((3, 112, 112), 10_000).eval()
    conv1 = net.features.conv1
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2) and conv1.bias is None
    assert isinstance(net.features.maxpool, torch.nn.MaxPool2d)
    sizes = {}
    net.features.layer4.register_forward_hook(
        lambda m, i, out: sizes.__setitem__(4, tuple(out.shape[2:])))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 112, 112)).shape == (1, 10_000)
    assert tuple(sizes[4]) == (4, 4)  # 112 → 56 (stem) → 28 (max-pool) → 28, 14, 7, 4
    assert net.head.bias is not None and tuple(net.head.weight.shape) == (10_000, 512)


def test_reduced_resnet18_map_sizes_and_strides():
    net = ReducedResNet18((3, 32, 32), 10).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, 4 stages × 2 blocks × 2, three projections
    assert all(m.stride == (1, 1) for m in convs)
    sizes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(net.features, name).register_forward_hook(
            lambda m, i, out, name=name: sizes.__setitem__(name, tuple(out.shape[1:])))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert sizes == {"layer1": (21, 32, 32), "layer2": (42, 32, 32),
                     "layer3": (85, 16, 16), "layer4": (170, 8, 8)}
    pool = net.features.pool
    assert isinstance(pool, PowerMeanPool) and pool.p == 3.0
    assert list(pool.parameters()) == [] and list(pool.buffers()) == []  # nothing about it trains


def test_power_mean_pool_is_cube_root_of_mean_of_cubes():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                       [[0.0, 0.0], [0.0, 6.0]]]])  # (1, 2, 2, 2)
    eps3 = 1e-18  # a zero is clamped at 1e-6 before the cube
    expected = torch.tensor([(100.0 / 4) ** (1 / 3), ((216.0 + 3 * eps3) / 4) ** (1 / 3)])
    out = PowerMeanPool(p=3)(x)
    assert out.shape == (1, 2, 1, 1) and out.dtype == torch.float32
    assert torch.allclose(out.flatten(), expected, rtol=1e-6, atol=0)
    half = PowerMeanPool(p=3)(x.half())
    assert half.dtype == torch.float16 and torch.allclose(half.float().flatten(), expected,
                                                          rtol=1e-3)


def test_power_mean_pool_clamps_the_input_and_has_a_fixed_exponent():
    x = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]],
                       [[1.0, 0.0], [2.0, 0.0]]]], requires_grad=True)
    pool = PowerMeanPool(p=3)
    out = pool(x)
    assert out[0, 0].item() == pytest.approx(1e-6, rel=1e-4)  # a dead channel: the clamp, 1e-6
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0, 0], torch.zeros(2, 2))
    # live channel: d/dx_i (mean x³)^(1/3) = x_i² / (4 · M²), M = (9/4)^(1/3)
    m = (9.0 / 4) ** (1 / 3)
    expected = torch.tensor([[1.0, 0.0], [4.0, 0.0]]) / (4 * m * m)
    assert torch.allclose(x.grad[0, 1], expected, rtol=1e-5)


def test_the_unused_prelu_is_frozen_and_no_forward_reads_it():
    torch.manual_seed(0)
    net = ReducedResNet18((3, 32, 32), 10).eval()
    prelu = net.unused_prelu.weight
    assert prelu.tolist() == [0.25] and not prelu.requires_grad  # nn.PReLU's initial value
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        prelu.fill_(123.0)
        assert torch.equal(net(x), before)
    names = [name for name, _ in net.state_dict().items()]
    # where the release's state dict has it: after the last block, before the head
    assert names[-2:] == ["unused_prelu.weight", "head.weight"]
    assert names[-3].startswith("features.layer4.")


@pytest.mark.parametrize("dataset,shape,num_class", [("cifar100", (3, 32, 32), 100),
                                                     ("mnist", (1, 28, 28), 10),
                                                     ("celeb", (3, 64, 64), 30)])
def test_a_state_dict_under_other_names_loads_tensor_for_tensor(dataset, shape, num_class):
    """load_release_state_dict maps by position, as the release's names differ from ours (the real
    release is loaded in tests/test_release_equivalence.py)."""
    torch.manual_seed(1)
    source = build_network(dataset, shape, num_class)
    theirs = {f"convnet.tensor_{i}": t.clone() for i, t in enumerate(source.state_dict().values())}
    torch.manual_seed(2)
    net = load_release_state_dict(build_network(dataset, shape, num_class), theirs)
    for (name, mine), (_, want) in zip(net.state_dict().items(), source.state_dict().items()):
        assert torch.equal(mine, want), name
    with pytest.raises(ConfigError, match="holds .* tensors but"):
        load_release_state_dict(build_network(dataset, shape, num_class),
                                dict(list(theirs.items())[:-1]))
    with pytest.raises(ConfigError, match="has shape"):
        load_release_state_dict(build_network(dataset, shape, num_class + 1), theirs)


@pytest.mark.parametrize("side,kernel,stride,maxpool", [(224, 7, 2, True), (112, 7, 2, False),
                                                        (64, 3, 1, False), (32, 3, 1, False)])
def test_resnet18_stem_follows_the_image_size(side, kernel, stride, maxpool):
    net = ResNet18((3, side, side), 100)
    conv1 = net.features.conv1
    assert conv1.kernel_size == (kernel, kernel) and conv1.stride == (stride, stride), side
    assert conv1.in_channels == 3 and conv1.bias is None
    assert hasattr(net.features, "maxpool") == maxpool
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == maxpool
    assert not any(name.endswith("fc") for name, _ in net.named_modules())  # torchvision's fc is gone
    assert net.head.bias is None and tuple(net.head.weight.shape) == (100, 512)


def test_resnet18_112_px_without_max_pool_matches_224_px_map_sizes():
    sizes = {}
    for side in (224, 112):
        net = ResNet18((3, side, side), 10).eval()
        net.features.layer1.register_forward_hook(
            lambda m, i, out, side=side: sizes.__setitem__((side, 1), tuple(out.shape[2:])))
        net.features.layer4.register_forward_hook(
            lambda m, i, out, side=side: sizes.__setitem__((side, 4), tuple(out.shape[2:])))
        with torch.no_grad():
            assert net.features(torch.randn(1, 3, side, side)).shape == (1, 512)
    assert sizes[(224, 1)] == sizes[(112, 1)] == (56, 56)
    assert sizes[(224, 4)] == sizes[(112, 4)] == (7, 7)


def test_resnet18_parameters_and_channels():
    net = ResNet18((3, 224, 224), 1000)
    # torchvision's resnet18 (11 689 512) less fc's bias: the head is the same 512×1000 matrix
    assert count(net) == 11_689_512 - 1000
    gray = ResNet18((1, 32, 32), 5).eval()
    assert gray.features.conv1.in_channels == 1
    with torch.no_grad():
        x = torch.randn(2, 1, 32, 32)
        assert gray.features(x).shape == (2, 512)
        assert torch.equal(gray.head(gray.features(x)), gray(x))
