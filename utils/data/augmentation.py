"""Each data set's transforms under ``args.augmentation``: "release" as the authors' code had them,
"corrected" as docs/data.md explains (``pipeline``); the channel statistics they normalise with; the
side of the images a network sees (``image_size``); and, for the data sets held in memory, the same
augmentation on a batch on the device (``augment_batch``, ``args.gpu_data``).
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.sources import ImageFiles

# Per-channel statistics of each training set, as published for these data sets.
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The release's CIFAR-100 values, a little off the published ones; it normalised MS-Celeb with them too.
RELEASE_CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
ESTIMATED = "estimated"  # statistics measured on STATS_SAMPLE training images when the data are read
STATS_SAMPLE = 500  # training images that estimate CUB's and MS-Celeb's channel statistics
MEASURED = "measured"  # statistics of every training image, computed when the data are read (digits32)
# The statistics each pipeline normalises with (None: it does not normalise); MNIST's and the
# digits' are the same under both settings (their readers).
STATS = {
    "release": {"cifar100": RELEASE_CIFAR100_STATS, "svhn": IMAGENET_STATS,
                "imagenet": IMAGENET_STATS, "celeb": RELEASE_CIFAR100_STATS, "cub200": None,
                "digits32": MEASURED},
    "corrected": {"cifar100": CIFAR100_STATS, "svhn": SVHN_STATS, "imagenet": IMAGENET_STATS,
                  "celeb": ESTIMATED, "cub200": ESTIMATED, "digits32": MEASURED},
}
# Side of the square images the networks see: fixed by the data set, or for the image-file data sets
# args.image_size, else the crop of the chosen pipeline (the release cropped ImageNet to 112).
FIXED_SIZE = {"mnist": 28, "digits": 8, "digits32": 32, "cifar100": 32, "svhn": 32}
DEFAULT_IMAGE_SIZE = {"release": {"imagenet": 112, "celeb": 112, "cub200": 224},
                      "corrected": {"imagenet": 224, "celeb": 112, "cub200": 224}}


def image_size(cfg):
    """The side of the square images ``cfg``'s network sees."""
    if cfg.dataset in FIXED_SIZE:
        return FIXED_SIZE[cfg.dataset]
    return cfg.image_size or DEFAULT_IMAGE_SIZE[cfg.augmentation][cfg.dataset]


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


RELEASE_DEGREES = 10  # every training pipeline of the release rotated by up to 10°
# The augmentation of the data sets held in memory, read both by their torchvision transforms and by
# augment_batch (args.gpu_data), so the two draw from the same distribution.
IN_MEMORY_AUGMENT = {
    "release": {"cifar100": Augmentation(4, flip=True, degrees=RELEASE_DEGREES),
                "svhn": Augmentation(4, flip=True, degrees=RELEASE_DEGREES),
                # digits32 has no release; it takes the shape of the release's SVHN pipeline
                "digits32": Augmentation(4, flip=True, degrees=RELEASE_DEGREES)},
    # Digits are never flipped: a mirrored 2 or 5 is no longer that digit.
    "corrected": {"cifar100": Augmentation(4, flip=True),
                  "svhn": Augmentation(2, degrees=10),
                  "digits32": Augmentation(2, degrees=10)},
}
# The release's (crop, train resize, test resize) sides of its scale-augmented pipelines; at another
# args.image_size both resize sides keep their ratio to the crop.
RELEASE_RESIZE = {"imagenet": (112, 120, 115), "cub200": (224, 230, 230)}
CUB_BRIGHTNESS = 63 / 255  # the release's ColorJitter on CUB


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


def pipeline(dataset, setting, size):
    """The Pipeline of ``dataset`` (one with images: not MNIST, not the 8×8 digits) under
    args.augmentation = ``setting`` for ``size``-px crops: "release" as the authors' code had it,
    "corrected" as docs/data.md explains. ``stats`` ESTIMATED or MEASURED: the reader fills them in."""
    stats = STATS[setting][dataset]
    if dataset in IN_MEMORY_AUGMENT[setting]:
        return Pipeline(size, IN_MEMORY_AUGMENT[setting][dataset], stats)
    if dataset == "celeb":
        return _faces(setting, size, stats)
    return _objects(dataset, setting, size, stats)


def _faces(setting, size, stats):
    """Aligned faces: a padded shift and a mirror, no rescaling. Resizing to the crop side lets other
    sizes batch; on the release's 112-px faces at 112 it is a no-op (PIL returns a copy)."""
    from torchvision import transforms as T
    square = [T.Resize((size, size))]
    if setting == "release":
        return Pipeline(size, Augmentation(4, flip=True, degrees=RELEASE_DEGREES), stats, square,
                        square)
    return Pipeline(size, Augmentation(size // 14, flip=True), stats, square, square)


def _objects(dataset, setting, size, stats):
    """ImageNet and CUB: scale-augmented crops to train, a centre crop to test."""
    from torchvision import transforms as T
    if setting == "corrected":
        return Pipeline(size, Augmentation(flip=True), stats, [],
                        [T.Resize(size * 8 // 7), T.CenterCrop(size)])
    crop, train_side, test_side = RELEASE_RESIZE[dataset]
    brightness = CUB_BRIGHTNESS if dataset == "cub200" else 0
    return Pipeline(size, Augmentation(flip=True, degrees=RELEASE_DEGREES, brightness=brightness),
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
