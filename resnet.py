"""Networks of the paper (each data set's spec in ``data_sources.py`` names its network).

Every network exposes the split the method needs: ``features`` is the feature extractor θ and ``head``
the one linear classifier φ whose rows ``[k*class_per_task, (k+1)*class_per_task)`` (and the same
entries of its bias, where it has one) belong to task k. The learner finds φ through ``model.head``;
every other parameter that takes a gradient is θ (the reduced ResNet-18 also carries one frozen
parameter no forward pass uses, as the release did).

The MLP, the reduced ResNet-18 and the MS-Celeb ResNet-18 are the release's networks, parameter for
parameter and with its initialisation. The release had no ImageNet or CUB network: ``ResNet18`` is
ours.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.errors import ConfigError


class MLP(nn.Module):
    """The paper's MNIST network: 784-400-400 with ReLUs, then a bias-free head (release: RPS-Net MLP)."""

    def __init__(self, input_shape, num_class, hidden=400):
        super().__init__()
        in_features = math.prod(input_shape)
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_class, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


class PowerMeanPool(nn.Module):
    """Global power-mean pooling with a fixed exponent, (N, C, H, W) -> (N, C, 1, 1):
    (mean over H×W of x^p)^(1/p), p = 3 in the release (the cube root of the mean of cubes).

    As in the release: x is clamped at ``eps`` = 1e-6 first (which also keeps the root's gradient
    finite on an all-zero channel), the mean is an average pool over the whole map, and nothing about
    the pooling is trained: p is a constant, not a parameter. Computed in float32 at least (x³
    overflows half precision early), returned in the input's dtype.
    """

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p, self.eps = float(p), eps

    def forward(self, x):
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        cubes = wide.clamp(min=self.eps).pow(self.p)
        return F.avg_pool2d(cubes, cubes.shape[-2:]).pow(1.0 / self.p).to(x.dtype)

    def extra_repr(self):
        return f"p={self.p}, eps={self.eps}"


def unused_prelu():
    """The release's reduced ResNet-18 builds an ``nn.PReLU()`` that no forward pass uses: one weight
    (0.25), the 1,250,237th parameter, stepped by nothing (it never has a gradient). Kept, frozen,
    where the release's state dict has it, so that the release's weights load tensor for tensor."""
    prelu = nn.PReLU()
    prelu.requires_grad_(False)
    return prelu


def conv_init_(module):
    """The release's initialisation: convolution weights Kaiming-normal (fan_out, ReLU gain),
    BatchNorm weight 1 and bias 0; convolution biases and the head keep PyTorch's defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class BasicBlock(nn.Module):
    """3×3 conv–BN–ReLU–3×3 conv–BN plus shortcut, then ReLU; stride 1 throughout, every
    convolution with a bias (the release's).

    The shortcut is the identity, or where the width changes a 1×1 conv (with bias), BN and a ReLU
    (the release's projection; torchvision's has neither the bias nor the ReLU).
    """

    def __init__(self, in_planes, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=1, bias=True),
                                          nn.BatchNorm2d(planes), nn.ReLU())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_planes, planes, num_blocks=2):
    """One stage: ``num_blocks`` basic blocks, the first one changing the width."""
    blocks = [BasicBlock(in_planes, planes)] + [BasicBlock(planes, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ReducedResNet18(nn.Module):
    """The release's reduced ResNet-18 for CIFAR-100 and SVHN, parameter for parameter: 1,250,237
    with 100 classes, 1,234,937 with 10.

    3×3 stride-1 stem (with bias), four stages of two basic blocks with widths 21/42/85/170, every
    conv stride 1; resolution falls only through a 2×2 max-pool after stages 2 and 3 (32×32 input:
    32, 32, 16, 8 after stages 1–4). Global pooling: the cube root of the mean of cubes (fixed
    exponent 3, nothing trained), then the bias-free head 170 → num_class. Initialised as the release
    (``conv_init_``). Between ``features`` and ``head`` sits the release's unused PReLU weight
    (``unused_prelu``), frozen and outside θ.
    """

    widths = (21, 42, 85, 170)

    def __init__(self, input_shape, num_class):
        super().__init__()
        w1, w2, w3, w4 = self.widths
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(input_shape[0], w1, 3, stride=1, padding=1, bias=True)),
            ("bn1", nn.BatchNorm2d(w1)),
            ("relu", nn.ReLU(inplace=True)),
            ("layer1", make_stage(w1, w1)),
            ("layer2", make_stage(w1, w2)),
            ("pool2", nn.MaxPool2d(2)),
            ("layer3", make_stage(w2, w3)),
            ("pool3", nn.MaxPool2d(2)),
            ("layer4", make_stage(w3, w4)),
            ("pool", PowerMeanPool(p=3.0)),
            ("flatten", nn.Flatten()),
        ]))
        conv_init_(self.features)
        self.unused_prelu = unused_prelu()
        self.head = nn.Linear(w4, num_class, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


class ResNet18(nn.Module):
    """Ours for ImageNet and CUB-200 (the release had no network for them): torchvision's ResNet-18
    (random init) with a bias-free head.

    The stem follows the image side s = min(H, W), so that the last stage still sees a map of a few
    pixels rather than 1×1:
      - s ≥ 160 (224-px ImageNet/CUB): the standard 7×7 stride-2 conv and 3×3 stride-2 max-pool, /32
        overall (224 → 7×7 after layer4).
      - 64 < s < 160 (the release's 112-px ImageNet crops): the 7×7 stride-2 conv but no max-pool,
        /16 overall, so 112 px gives the same map sizes from layer1 on as 224 px does in the
        standard net.
      - s ≤ 64 (downsampled images, small test images): a 3×3 stride-1 conv and no max-pool, as ResNets
        for CIFAR do, /8 overall (32 → 4×4); the standard stem would leave 1×1 maps or less.
    conv1 takes ``input_shape[0]`` channels. ``features`` ends with global average pooling and flatten
    (512-d); torchvision's ``fc`` is dropped, the head replaces it.
    """

    def __init__(self, input_shape, num_class):
        super().__init__()
        channels, side = input_shape[0], min(input_shape[1:])
        import torchvision  # here, not at the top: importing it costs every process seconds
        net = torchvision.models.resnet18(weights=None)
        if side > 64:
            conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        layers = [("conv1", conv1), ("bn1", net.bn1), ("relu", net.relu)]
        if side >= 160:
            layers.append(("maxpool", net.maxpool))
        layers += [("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3),
                   ("layer4", net.layer4), ("avgpool", net.avgpool), ("flatten", nn.Flatten())]
        self.features = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(net.fc.in_features, num_class, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


class CelebResNet18(nn.Module):
    """The release's MS-Celeb network: torchvision's ResNet-18 as it stands, so the 7×7 stride-2 stem
    (no bias), BN, ReLU, the 3×3 stride-2 max-pool, four stages and average pooling also at 112 px
    (112 → 4×4 after layer4), with torchvision's initialisation; its head is torchvision's ``fc``,
    512 → num_class **with a bias**. 16,306,512 parameters with 10,000 classes.
    """

    def __init__(self, input_shape, num_class):
        super().__init__()
        import torchvision
        net = torchvision.models.resnet18(weights=None, num_classes=num_class)
        conv1 = net.conv1
        if input_shape[0] != conv1.in_channels:
            conv1 = nn.Conv2d(input_shape[0], 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        self.features = nn.Sequential(OrderedDict([
            ("conv1", conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool),
            ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3),
            ("layer4", net.layer4), ("avgpool", net.avgpool), ("flatten", nn.Flatten())]))
        self.head = net.fc

    def forward(self, x):
        return self.head(self.features(x))


def load_release_state_dict(model, state):
    """Load weights the authors' release saved (its ``session_<t>_model_best.pth.tar``: the state dict
    of its wrapper, keys ``convnet.…``, or of the bare network) into ``model``, our network for the
    same data set, tensor for tensor. The release registers its tensors in the order ours does (stem,
    blocks with their shortcuts, the unused PReLU, head), so the i-th entry of one is the i-th of
    the other; every shape is checked. Returns ``model``."""
    ours = model.state_dict()
    theirs = list(state.items())
    if len(theirs) != len(ours):
        raise ConfigError(f"the release's state dict holds {len(theirs)} tensors but "
                          f"{type(model).__name__} has {len(ours)}; was it saved for another data "
                          "set or number of classes?")
    mapped = {}
    for (name, mine), (their_name, tensor) in zip(ours.items(), theirs):
        if tuple(mine.shape) != tuple(tensor.shape):
            raise ConfigError(f"the release's {their_name} has shape {tuple(tensor.shape)} but our "
                              f"{name} has {tuple(mine.shape)}; was it saved for another data set "
                              "or number of classes?")
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model
