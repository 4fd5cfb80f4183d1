"""Every data set of the paper, each as one ``DataSpec``: its reader, its network, the side of its
images, and under each ``args.augmentation`` setting its pipeline and channel statistics, from which
what it can do (resize, live in memory, live on the GPU) follows. Nothing else in the code names a
data set; adding one means writing its reader and its spec here (docs/data.md, *Adding a data set*).

| ``args.dataset`` | data | read from |
|---|---|---|
| mnist | MNIST, 28×28 gray | torchvision's MNIST files (downloaded when missing) |
| digits | scikit-learn's 8×8 digits | scikit-learn, no download (the demo) |
| digits32 | the same digits at 32×32 RGB | scikit-learn, no download (the BatchNorm demo) |
| cifar100 | CIFAR-100 | torchvision's CIFAR-100 files (downloaded when missing) |
| svhn | SVHN | torchvision's .mat files (downloaded when missing) |
| imagenet | ImageNet (ILSVRC-2012) | class folders train/ and val/ |
| celeb | MS-Celeb-10K | identity folders, cut as the release cut MS-Celeb-1M |
| cub200 | CUB-200-2011 | the dataset's text files and images/ |
"""
from dataclasses import dataclass
from functools import partial

from resnet import MLP, CelebResNet18, ReducedResNet18, ResNet18
from utils.data import augmentation as A
from utils.data.readers import (load_celeb, load_cifar100, load_cub, load_digits, load_digits32,
                                load_imagenet, load_mnist, load_svhn)
from utils.errors import ConfigError

# Per-channel statistics of the training sets, as published for these data sets.
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The release's CIFAR-100 values, a little off the published ones; it normalised MS-Celeb with them too.
RELEASE_CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
RELEASE_DEGREES = 10  # every training pipeline of the release rotated by up to 10°
RELEASE_SMALL = A.Augmentation(4, flip=True, degrees=RELEASE_DEGREES)  # its 32-px pipelines
CUB_BRIGHTNESS = 63 / 255  # the release's ColorJitter on CUB


@dataclass(frozen=True)
class DataSpec:
    """One data set.

    ``size``: the side of its square images, or None for a data set read from image files, which
    any side suits (``args.image_size``, else ``default_size`` of the augmentation setting).
    ``stats``: {augmentation setting: the channel statistics its pipeline normalises with (None: it
    does not normalise; ``A.ESTIMATED``/``A.MEASURED``: the reader measures them)}; None for a data set
    its reader normalises itself and nothing augments, alike under either setting.
    ``augment``: {setting: ``A.Augmentation``} of a data set held in memory, read both by its
    torchvision transforms and on the GPU (``args.gpu_data``), so the two draw alike.
    ``pipeline``: (setting, size, stats) -> ``A.Pipeline`` of a data set of image files.
    ``in_memory``: the reader holds it as tensors, small enough for one GPU (``args.gpu_data``)."""
    name: str
    reader: object    # reader(cfg, pipeline or None) -> utils.data.sources.Source
    network: type     # constructor(input_shape, num_class), resnet.py
    size: int = None
    stats: dict = None
    augment: dict = None
    pipeline: object = None
    default_size: dict = None
    in_memory: bool = False

    @property
    def augmented(self):
        """Whether ``args.augmentation`` changes anything about it."""
        return self.stats is not None

    @property
    def resizable(self):
        return self.size is None

    def image_size(self, cfg):
        """The side of the square images ``cfg``'s network sees."""
        return self.size if self.size is not None else (
            cfg.image_size or self.default_size[cfg.augmentation])

    def pipeline_for(self, cfg):
        """The ``A.Pipeline`` of ``cfg.augmentation`` at ``cfg``'s image size, or None where the
        data set is not augmented."""
        if not self.augmented:
            return None
        stats, size = self.stats[cfg.augmentation], self.image_size(cfg)
        if self.augment is not None:
            return A.Pipeline(size, self.augment[cfg.augmentation], stats)
        return self.pipeline(cfg.augmentation, size, stats)

    def read(self, cfg):
        return self.reader(cfg, self.pipeline_for(cfg))


def _specs(*specs):
    return {spec.name: spec for spec in specs}


DATASETS = _specs(
    DataSpec("mnist", load_mnist, MLP, size=28, in_memory=True),
    DataSpec("digits", load_digits, MLP, size=8, in_memory=True),
    # No release: it takes the shape of the release's SVHN pipeline. Digits are never flipped by
    # "corrected": a mirrored 2 or 5 is no longer that digit.
    DataSpec("digits32", load_digits32, ReducedResNet18, size=32,
             stats={"release": A.MEASURED, "corrected": A.MEASURED},
             augment={"release": RELEASE_SMALL, "corrected": A.Augmentation(2, degrees=10)},
             in_memory=True),
    DataSpec("cifar100", load_cifar100, ReducedResNet18, size=32,
             stats={"release": RELEASE_CIFAR100_STATS, "corrected": CIFAR100_STATS},
             augment={"release": RELEASE_SMALL, "corrected": A.Augmentation(4, flip=True)},
             in_memory=True),
    DataSpec("svhn", load_svhn, ReducedResNet18, size=32,
             stats={"release": IMAGENET_STATS, "corrected": SVHN_STATS},
             augment={"release": RELEASE_SMALL, "corrected": A.Augmentation(2, degrees=10)},
             in_memory=True),
    # The release cropped ImageNet to 112 px (crop, train resize, test resize: 112, 120, 115).
    DataSpec("imagenet", load_imagenet, ResNet18,
             stats={"release": IMAGENET_STATS, "corrected": IMAGENET_STATS},
             pipeline=partial(A.objects_pipeline, release_sides=(112, 120, 115),
                              degrees=RELEASE_DEGREES),
             default_size={"release": 112, "corrected": 224}),
    DataSpec("celeb", load_celeb, CelebResNet18,
             stats={"release": RELEASE_CIFAR100_STATS, "corrected": A.ESTIMATED},
             pipeline=partial(A.faces_pipeline, release=RELEASE_SMALL),
             default_size={"release": 112, "corrected": 112}),
    DataSpec("cub200", load_cub, ResNet18,
             stats={"release": None, "corrected": A.ESTIMATED},
             pipeline=partial(A.objects_pipeline, release_sides=(224, 230, 230),
                              degrees=RELEASE_DEGREES, brightness=CUB_BRIGHTNESS),
             default_size={"release": 224, "corrected": 224}),
)


def dataset_spec(name):
    if name not in DATASETS:
        raise ConfigError(f"args.dataset: no data set is called {name!r}; choose one of "
                          f"{', '.join(DATASETS)}.")
    return DATASETS[name]


def resizable():
    """The data sets read from image files, whose crop side ``args.image_size`` may set."""
    return tuple(name for name, spec in DATASETS.items() if spec.resizable)


def in_memory():
    """The data sets held as tensors, which ``args.gpu_data`` may put on the GPU."""
    return tuple(name for name, spec in DATASETS.items() if spec.in_memory)


def build_network(dataset, input_shape, num_class):
    """The paper's network for ``dataset``, with a head of ``num_class`` rows."""
    return dataset_spec(dataset).network(tuple(input_shape), num_class)
