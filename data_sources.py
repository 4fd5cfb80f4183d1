"""Every data set of the paper, and where it is read: ``args.dataset`` picks a reader
(``utils/data/readers.py``), which returns a ``Source`` (``utils/data/sources.py``) whose transforms
follow ``args.augmentation`` (``utils/data/augmentation.py``).

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
from utils.data.readers import (load_celeb, load_cifar100, load_cub, load_digits, load_digits32,
                                load_imagenet, load_mnist, load_svhn)

# args.dataset -> reader(cfg) -> Source
DATA_SOURCES = {
    "mnist": load_mnist,
    "digits": load_digits,
    "digits32": load_digits32,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagenet": load_imagenet,
    "celeb": load_celeb,
    "cub200": load_cub,
}
