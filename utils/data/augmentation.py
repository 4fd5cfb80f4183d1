"""The parts a data set's transforms are made of (each data set's own, under either
``args.augmentation`` setting, are in its spec, ``data_sources.py``): the random part of a training
pipeline (``Augmentation``), a pipeline (``Pipeline``), the two kinds of pipeline of the data sets read
from image files (faces, objects), channel statistics measured when the data are read, and for the
data sets held in memory the same augmentation on a batch on the device (``augment_batch``,
``args.gpu_data``).
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.sources import ImageFiles

ESTIMATED = "estimated"  # statistics measured on STATS_SAMPLE training images when the data are read
STATS_SAMPLE = 500  # training images that estimate CUB's and MS-Celeb's channel statistics
MEASURED = "measured"  # statistics of every training image, computed when the data are read (digits32)


@dataclass(frozen=True)
class Augmentation:
    """The random part of a training pipeline, in this order: a crop of side ``size`` (RandomCrop of
    the image zero-padded by ``padding``, or RandomResizedCrop when ``padding`` is None), a horizontal
    flip, a rotation of up to ``degrees`` (0: none) and a brightness jitter (0: none). RandomRotation
    keeps torchvision's defaults: nearest neighbour, zero fill."""
    padding: int = None
    flip: bool = False
    degrees: float = 0
    brightness: float = 0

    def transforms(self, size):
        """The torchvision transforms, for crops of side ``size``."""
        from torchvision import transforms as T
        crop = T.RandomResizedCrop(size) if self.padding is None \
            else T.RandomCrop(size, padding=self.padding)
        return ([crop] + [T.RandomHorizontalFlip()] * self.flip
                + [T.RandomRotation(self.degrees)] * bool(self.degrees)
                + [T.ColorJitter(brightness=self.brightness)] * bool(self.brightness))


@dataclass
class Pipeline:
    """One data set's transforms under one args.augmentation. Training: ``train_prep``, ``augment``,
    ToTensor, Normalize(``stats``); testing: ``test_prep``, ToTensor, Normalize(``stats``).
    ``stats`` None: no normalisation (the release's CUB); ESTIMATED: see ``estimate_stats``."""
    size: int
    augment: Augmentation
    stats: object
    train_prep: list = field(default_factory=list)
    test_prep: list = field(default_factory=list)

    def transforms(self):
        """(train, test) torchvision transforms."""
        from torchvision import transforms as T
        tail = [T.ToTensor()] + ([T.Normalize(*self.stats)] if self.stats else [])
        return (T.Compose(self.train_prep + self.augment.transforms(self.size) + tail),
                T.Compose(self.test_prep + tail))


def faces_pipeline(setting, size, stats, release):
    """Aligned faces (MS-Celeb): a padded shift and a mirror, no rescaling; ``release`` is the
    release's augmentation. Resizing to the crop side lets other sizes batch; on the release's 112-px
    faces at 112 it is a no-op (PIL returns a copy)."""
    from torchvision import transforms as T
    square = [T.Resize((size, size))]
    augment = release if setting == "release" else Augmentation(size // 14, flip=True)
    return Pipeline(size, augment, stats, square, square)


def objects_pipeline(setting, size, stats, release_sides, degrees, brightness=0):
    """Objects (ImageNet, CUB): scale-augmented crops to train, a centre crop to test. The release
    resized to ``release_sides`` = (crop, train resize, test resize), rotated by up to ``degrees`` and
    jittered the brightness by ``brightness``; at another crop side both resize sides keep their
    ratio to the crop."""
    from torchvision import transforms as T
    if setting == "corrected":
        return Pipeline(size, Augmentation(flip=True), stats, [],
                        [T.Resize(size * 8 // 7), T.CenterCrop(size)])
    crop, train_side, test_side = release_sides
    return Pipeline(size, Augmentation(flip=True, degrees=degrees, brightness=brightness),
                    stats, [T.Resize(round(size * train_side / crop))],
                    [T.Resize(round(size * test_side / crop)), T.CenterCrop(size)])


def augment_batch(x, augment, generator):
    """An in-memory data set's ``Augmentation`` on a batch of [0, 1] images N×C×H×W, on its device, in
    the transforms' order: a random crop of the zero-padded image, a horizontal flip, a rotation
    about the centre with nearest-neighbour sampling and zero fill (RandomRotation on a PIL image).
    The random draws come from the host ``generator``; the distribution is torchvision's, the draws
    are not."""
    if augment is None:
        return x
    x = random_crop(x, augment.padding, generator)
    if augment.flip:
        x = random_flip(x, generator)
    if augment.degrees:
        x = random_rotation(x, augment.degrees, generator)
    return x


def random_flip(x, generator):
    """Each image mirrored left-right with probability 1/2 (RandomHorizontalFlip)."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_rotation(x, degrees, generator):
    """Each image rotated by an angle drawn uniformly in [-degrees, degrees] (RandomRotation)."""
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_crop(x, pad, generator):
    """Each image cropped back to its size at a random offset of the image padded with ``pad`` zeros
    on every side (torchvision's RandomCrop(size, padding=pad))."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
              for _ in range(2))
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def normalise_batch(x, stats):
    """(x − mean) / std per channel, as ``T.Normalize(*stats)``."""
    mean, std = (torch.tensor(s, dtype=x.dtype, device=x.device)[:, None, None] for s in stats)
    return (x - mean) / std


def estimate_stats(samples, pipe, count=STATS_SAMPLE):
    """Per-channel mean and std of up to ``count`` training images seen through ``pipe``'s test
    transform. The sample is fixed, so a resumed run normalises exactly as the first one did."""
    from torchvision import transforms as T
    plain = T.Compose(pipe.test_prep + [T.ToTensor()])
    chosen = np.random.RandomState(0).permutation(len(samples))[:count]
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for x, _ in ImageFiles([samples[i] for i in sorted(chosen)], plain):
        x = x.double().flatten(1)
        total += x.sum(1)
        total_sq += (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
