"""Networks of the paper, picked by data set name.

Every network exposes the split the method needs: ``features`` is the feature extractor θ and ``head``
the one bias-free linear classifier φ whose rows ``[k*class_per_task, (k+1)*class_per_task)`` belong to
task k. The learner finds φ through ``model.head``; everything else is θ.
"""
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

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
    """Global power-mean pooling, (N, C, H, W) -> (N, C, 1, 1): (mean over H×W of x^p)^(1/p).

    Meant for non-negative (post-ReLU) maps. Computed in float32 at least (x³ overflows half precision
    early), returned in the input's dtype.
    The mean is clamped to ``eps`` before the root: d m^(1/p)/dm is infinite at m = 0, so an all-zero
    channel would give 0·inf = NaN; below the clamp the gradient is exactly zero instead.
    """

    def __init__(self, p=3, eps=1e-12):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x):
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = wide.pow(self.p).mean(dim=(2, 3), keepdim=True)
        return mean.clamp(min=self.eps).pow(1.0 / self.p).to(x.dtype)


class BasicBlock(nn.Module):
    """3×3 conv–BN–ReLU–3×3 conv–BN plus shortcut, then ReLU; stride 1 throughout.

    The shortcut is a 1×1 conv + BN projection when the width changes, the identity otherwise.
    """

    def __init__(self, in_planes, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=1, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_planes, planes, num_blocks=2):
    """One stage: ``num_blocks`` basic blocks, the first one changing the width."""
    blocks = [BasicBlock(in_planes, planes)] + [BasicBlock(planes, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ReducedResNet18(nn.Module):
    """The release's reduced ResNet-18 for CIFAR-100 and SVHN (≈1.25 M parameters with 100 classes).

    3×3 stride-1 stem, four stages of two basic blocks with widths 21/42/85/170, every conv stride 1;
    resolution falls only through a 2×2 max-pool after stages 2 and 3 (32×32 input: 32, 32, 16, 8 after
    stages 1–4). Cubic power-mean global pooling, then the bias-free head 170 → num_class.
    """

    widths = (21, 42, 85, 170)

    def __init__(self, input_shape, num_class):
        super().__init__()
        w1, w2, w3, w4 = self.widths
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(input_shape[0], w1, 3, stride=1, padding=1, bias=False)),
            ("bn1", nn.BatchNorm2d(w1)),
            ("relu", nn.ReLU(inplace=True)),
            ("layer1", make_stage(w1, w1)),
            ("layer2", make_stage(w1, w2)),
            ("pool2", nn.MaxPool2d(2)),
            ("layer3", make_stage(w2, w3)),
            ("pool3", nn.MaxPool2d(2)),
            ("layer4", make_stage(w3, w4)),
            ("pool", PowerMeanPool(p=3)),
            ("flatten", nn.Flatten()),
        ]))
        self.head = nn.Linear(w4, num_class, bias=False)

    def forward(self, x):
        return self.head(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (random init) for ImageNet, MS-Celeb and CUB-200, with a bias-free head.

    The stem follows the image side s = min(H, W), so that the last stage still sees a map of a few
    pixels rather than 1×1:
      - s ≥ 160 (224-px ImageNet/CUB): the standard 7×7 stride-2 conv and 3×3 stride-2 max-pool, /32
        overall (224 → 7×7 after layer4).
      - 64 < s < 160 (112-px MS-Celeb, as in the paper): the 7×7 stride-2 conv but no max-pool, /16
        overall, so 112 px gives the same map sizes from layer1 on as 224 px does in the standard net.
      - s ≤ 64 (downsampled images, small test images): a 3×3 stride-1 conv and no max-pool, as ResNets
        for CIFAR do, /8 overall (32 → 4×4); the standard stem would leave 1×1 maps or less.
    conv1 takes ``input_shape[0]`` channels. ``features`` ends with global average pooling and flatten
    (512-d); torchvision's ``fc`` is dropped, the head replaces it.
    """

    def __init__(self, input_shape, num_class):
        super().__init__()
        channels, side = input_shape[0], min(input_shape[1:])
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


# data set name -> constructor(input_shape, num_class)
NETWORKS = {
    "mnist": MLP,
    "digits": MLP,
    "cifar100": ReducedResNet18,
    "svhn": ReducedResNet18,
    "imagenet": ResNet18,
    "celeb": ResNet18,
    "cub200": ResNet18,
}


def build_network(dataset, input_shape, num_class):
    """The paper's network for ``dataset``, with a head of ``num_class`` rows."""
    if dataset not in NETWORKS:
        raise ConfigError(f"args.dataset: no network is defined for {dataset!r}; "
                          f"choose one of {sorted(NETWORKS)}.")
    return NETWORKS[dataset](tuple(input_shape), num_class)
