"""Every data set of the paper as read from disk: one reader per ``args.dataset``, each called with
the args and the data set's ``Pipeline`` under ``args.augmentation`` (None for a data set nothing
augments) and returning a ``Source`` (``data_sources.py`` holds each data set's spec).

torchvision reads what it knows (MNIST, CIFAR-100, SVHN, ``ImageFolder`` trees for ImageNet and
MS-Celeb) and downloads what it can; CUB-200-2011's text files and MS-Celeb-1M's identity folders are
read here. When data are absent and cannot be had, the error names the data set, ``args.data_path``, the
expected layout and where to get it.
"""
import os
import random
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from utils.data.augmentation import ESTIMATED, MEASURED, estimate_stats
from utils.data.sources import ImageArray, ImageFiles, Source, TensorData, Tensors
from utils.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _torchvision(name, make, root, present, layout, where):
    """``make(download)``: read from disk, else let torchvision download it; one sentence if neither.

    torchvision checks the files' checksums, so "not found" and "corrupt" arrive as the same error;
    ``present`` (a path torchvision would read) tells them apart for the message."""
    try:
        return make(False)
    except Exception:  # torchvision raises RuntimeError, pickle and scipy errors on bad files
        pass
    try:
        return make(True)
    except Exception as e:  # no network, a mirror down, a read-only folder: all mean "get it by hand"
        state = ("is corrupt (its checksum does not match) and could not be downloaded again"
                 if os.path.exists(present) else "is not in args.data_path and could not be downloaded")
        raise ConfigError(f"{name} {state} ({type(e).__name__}); args.data_path = {root!r} must hold "
                          f"{layout} (from {where}).") from e


def _read_mnist(root, train):
    from torchvision import datasets
    split = "training" if train else "test"
    try:
        return datasets.MNIST(root, train=train, download=False)
    except Exception as e:  # torchvision's idx reader raises several types on truncated files
        if not (isinstance(e, RuntimeError) and "Dataset not found" in str(e)):
            raise ConfigError(f"MNIST's {split} files under args.data_path = {root!r} are corrupt "
                              f"({type(e).__name__}: {e}); delete {os.path.join(root, 'MNIST')} "
                              "and run again to download them.") from e
    try:
        return datasets.MNIST(root, train=train, download=True)
    except Exception as e:  # no network, a mirror down, a read-only folder: all mean "get it by hand"
        raise ConfigError(f"MNIST is not in args.data_path = {root!r} and could not be downloaded "
                          f"({type(e).__name__}); put the four files train-images-idx3-ubyte, "
                          "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                          f"t10k-labels-idx1-ubyte in {os.path.join(root, 'MNIST', 'raw')}.") from e


def load_mnist(cfg, pipe=None):
    """MNIST through torchvision, held in memory as normalised 1×28×28 tensors (no augmentation)."""
    splits = []
    for train in (True, False):
        ds = _read_mnist(cfg.data_path, train)
        x = ds.data.float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
        splits.append(TensorData(x, ds.targets.numpy()))
    train, test = splits
    return Source(train, train, test, train.labels, test.labels, 10, (1, 28, 28),
                  [str(d) for d in range(10)], Tensors(train.x, test.x))


def sklearn_digits(seed):
    """scikit-learn's bundled 8×8 digits and the split both digit data sets use: (images N×1×8×8 in
    [0, 1], float32; labels; training indices; test indices), 80/20 stratified, seeded by ``seed``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split
    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                              random_state=seed)
    return x, labels, tr, te


def load_digits(cfg, pipe=None):
    """scikit-learn's bundled 8×8 digits: real data with no download, split 80/20 stratified."""
    x, labels, tr, te = sklearn_digits(cfg.seed)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    train = TensorData(x[tr], labels[tr])
    test = TensorData(x[te], labels[te])
    return Source(train, train, test, train.labels, test.labels, 10, (1, 8, 8),
                  [str(d) for d in range(10)], Tensors(train.x, test.x))


def _array_source(train_images, train_labels, test_images, test_labels, names, pipe):
    train_tf, test_tf = pipe.transforms()
    # Views of the arrays (N×H×W×C memory seen as N×C×H×W): no copy unless args.gpu_data asks.
    tensors = Tensors(*(torch.from_numpy(images).permute(0, 3, 1, 2)
                        for images in (train_images, test_images)), pipe.augment, pipe.stats)
    return Source(ImageArray(train_images, train_labels, train_tf),
                  ImageArray(train_images, train_labels, test_tf),
                  ImageArray(test_images, test_labels, test_tf),
                  np.asarray(train_labels, np.int64), np.asarray(test_labels, np.int64),
                  len(names), (3,) + tuple(train_images.shape[1:3]), list(names), tensors)


DIGITS32_SIDE = 32


def upsampled_digits(x):
    """[0, 1] digits N×1×8×8 as uint8 RGB images N×32×32×3 (the three channels equal), the layout of
    SVHN's arrays.

    Bilinear on the [0, 1] intensities (align_corners=False: pixel centres, as PIL resizes): each
    pixel becomes a 4×4 block ramping to its neighbours, so strokes keep soft edges as in SVHN's
    photographs, where nearest neighbour would draw 4×4 squares with hard steps between them, an
    artefact of the upsampling the 3×3 convolutions could learn; bicubic would overshoot [0, 1].
    Bilinear is a convex combination, so the values stay in [0, 1], and averaging each 4×4 block
    gives back the original blurred by [1, 6, 1]/8 along each axis (tests/test_digits_cnn.py).
    Rounding to uint8 (PIL images, as SVHN's) moves a value by at most 0.5/255."""
    up = F.interpolate(x, size=(DIGITS32_SIDE, DIGITS32_SIDE), mode="bilinear", align_corners=False)
    images = up.mul(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    return np.ascontiguousarray(images.numpy())


def channel_stats(images):
    """Per-channel mean and (population) std of uint8 images N×H×W×C on the [0, 1] scale, over every
    pixel in float64: no sample drawn, so a resumed run normalises exactly as the first one did."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())


def load_digits32(cfg, pipe):
    """``load_digits``' images, labels and split, upsampled to 32×32 and repeated over three channels
    (``upsampled_digits``): real images for the reduced ResNet-18, held in memory as SVHN is and
    augmented as its pipelines are, normalised with their own training set's statistics."""
    x, labels, tr, te = sklearn_digits(cfg.seed)
    images = upsampled_digits(x)
    train, test = images[tr], images[te]
    if pipe.stats == MEASURED:
        pipe = replace(pipe, stats=channel_stats(train))
    return _array_source(train, labels[tr], test, labels[te], [str(d) for d in range(10)], pipe)


def load_cifar100(cfg, pipe):
    """CIFAR-100 through torchvision (python pickles under cifar-100-python/), 32×32 RGB."""
    from torchvision import datasets
    root = cfg.data_path
    splits = [_torchvision(
        "CIFAR-100", lambda download, train=train: datasets.CIFAR100(root, train, download=download),
        root, os.path.join(root, "cifar-100-python"),
        "cifar-100-python/ (the files train, test and meta) or cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar.html") for train in (True, False)]
    train, test = splits
    return _array_source(train.data, train.targets, test.data, test.targets, train.classes, pipe)


def load_svhn(cfg, pipe):
    """SVHN through torchvision (train_32x32.mat and test_32x32.mat, read with scipy), 32×32 RGB."""
    from torchvision import datasets
    root = cfg.data_path
    splits = [_torchvision(
        "SVHN", lambda download, split=split: datasets.SVHN(root, split, download=download),
        root, os.path.join(root, f"{split}_32x32.mat"), "train_32x32.mat and test_32x32.mat",
        "http://ufldl.stanford.edu/housenumbers/, format 2: cropped digits")
        for split in ("train", "test")]
    train, test = (np.ascontiguousarray(s.data.transpose(0, 2, 3, 1)) for s in splits)
    return _array_source(train, splits[0].labels, test, splits[1].labels,
                         [str(d) for d in range(10)], pipe)


# ------------------------------------------------------------------ image folders and CUB

def _scan_folder(name, root, split, test_split, where):
    """(class names, samples) of a ``<root>/<split>/<class>/<image>`` tree, scanned by ImageFolder."""
    from torchvision.datasets import ImageFolder
    path = os.path.join(root, split)
    layout = f"train/<class>/<image> and {test_split}/<class>/<image> folders"
    if not os.path.isdir(path):
        raise ConfigError(f"{name}: {path} is not a folder; args.data_path = {root!r} must hold "
                          f"{layout} (from {where}).")
    try:
        ds = ImageFolder(path)
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"{name}: {path} holds no usable <class>/<image> folders ({e}); "
                          f"args.data_path must hold {layout}, at least one image a class.") from e
    return ds.classes, ds.samples


def _folder_source(cfg, pipe, name, test_split, where):
    classes, train = _scan_folder(name, cfg.data_path, "train", test_split, where)
    test_classes, test = _scan_folder(name, cfg.data_path, test_split, test_split, where)
    if test_classes != classes:
        missing = sorted(set(classes) ^ set(test_classes))
        raise ConfigError(f"{name}: the class folders of {os.path.join(cfg.data_path, test_split)} "
                          f"differ from those of {os.path.join(cfg.data_path, 'train')} (e.g. "
                          f"{missing[:3]}); both must hold the same classes.")
    return _files_source(pipe, train, test, classes)


def _files_source(pipe, train, test, classes):
    if pipe.stats == ESTIMATED:
        pipe = replace(pipe, stats=estimate_stats(train, pipe))
    train_tf, test_tf = pipe.transforms()
    train_set = ImageFiles(train, train_tf)
    test_set = ImageFiles(test, test_tf)
    return Source(train_set, ImageFiles(train, test_tf), test_set, train_set.labels,
                  test_set.labels, len(classes), (3, pipe.size, pipe.size), list(classes))


def load_imagenet(cfg, pipe):
    """ImageNet (ILSVRC-2012) in the class-folder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    return _folder_source(cfg, pipe, "ImageNet", "val",
                          "https://image-net.org/download, with val/ sorted into class folders")


# MS-Celeb-10K as the release cut it from MS-Celeb-1M's aligned faces (one folder per identity): the
# sorted folder list shuffled by Python's random seeded 3, then the first CELEB_IDENTITIES identities
# holding more than CELEB_MORE_THAN images, of each the first CELEB_TRAIN images (by file name) to
# train, the next CELEB_TEST to test. Classes are numbered as the release numbered them: by the kept
# folder names compared as strings ('10' before '2'), not by the order the walk keeps them.
CELEB_SEED = 3
CELEB_IDENTITIES = 10_000
CELEB_MORE_THAN = 45
CELEB_TRAIN, CELEB_TEST = 30, 15


def load_celeb(cfg, pipe):
    """MS-Celeb-10K: train/<identity>/<image> and test/<identity>/<image> when both folders are there,
    else the release's cut of the identity folders under ``args.data_path`` (``celeb_identities``)."""
    root = cfg.data_path
    if all(os.path.isdir(os.path.join(root, split)) for split in ("train", "test")):
        return _folder_source(cfg, pipe, "MS-Celeb-10K", "test",
                              "a 10,000-identity subset of MS-Celeb-1M's aligned faces")
    names, train, test = celeb_identities(root)
    if not names:
        raise ConfigError(f"MS-Celeb-10K: args.data_path = {root!r} holds neither train/ and test/ "
                          f"folders nor an identity folder with at least {CELEB_MORE_THAN + 1} "
                          "images; put there train/<identity>/<image> and test/<identity>/<image> "
                          "folders, or MS-Celeb-1M's aligned faces as one folder per identity (those "
                          f"with at least {CELEB_MORE_THAN + 1} images are used).")
    return _files_source(pipe, train, test, names)


def celeb_identities(root):
    """(identity names, train samples, test samples) of the release's MS-Celeb-10K under ``root``.
    Which identities are kept, and which of their images train or test, follow the order of the walk;
    class c is the c-th kept folder name in sorted string order, so ``names`` is sorted and '10' comes
    before '2'. The release kept [path, name] rows in a numpy string array and numbered classes by
    ``np.unique`` of the names, in train and test alike; this is that numbering. The release shuffled
    with Python's ``random`` seeded 3, as here, but it shuffled ``os.listdir``'s order, which depends
    on the file system, so the identities kept here may not be the ones it kept; here the folders
    are sorted first, and each folder's images are taken in sorted order, so that the cut does not
    depend on the file system."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    kept = []  # (name, train paths, test paths), in the order of the walk
    walk = list(range(len(folders)))
    random.Random(CELEB_SEED).shuffle(walk)  # the release: random.seed(3); random.shuffle(...)
    for i in walk:
        if len(kept) == CELEB_IDENTITIES:
            break
        folder = os.path.join(root, folders[i])
        images = sorted(f for f in os.listdir(folder) if has_file_allowed_extension(f, IMG_EXTENSIONS))
        if len(images) <= CELEB_MORE_THAN:
            continue
        paths = [os.path.join(folder, f) for f in images]
        kept.append((folders[i], paths[:CELEB_TRAIN], paths[CELEB_TRAIN:CELEB_TRAIN + CELEB_TEST]))
    names = sorted(name for name, _, _ in kept)
    label = {name: c for c, name in enumerate(names)}
    train = [(p, label[name]) for name, paths, _ in kept for p in paths]
    test = [(p, label[name]) for name, _, paths in kept for p in paths]
    return names, train, test


CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"


def _read_table(path, columns):
    """A CUB text file: lines of ``columns`` whitespace-separated fields, the first an image id."""
    if not os.path.isfile(path):
        raise ConfigError(f"CUB-200-2011: {path} is missing; restore it from the CUB_200_2011 "
                          f"archive (from {CUB_URL}).")
    rows = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.strip().split(maxsplit=columns - 1)
            if not fields:
                continue
            if len(fields) != columns:
                raise ConfigError(f"CUB-200-2011: line {n} of {path} is corrupt ({line.strip()!r}); "
                                  "restore the file from the original archive.")
            rows[fields[0]] = fields[1:] if columns > 2 else fields[1]
    return rows


def load_cub(cfg, pipe):
    """CUB-200-2011 in its standard layout: images.txt, image_class_labels.txt, train_test_split.txt
    and images/; class names from classes.txt when present."""
    root = cfg.data_path
    if not os.path.isfile(os.path.join(root, "images.txt")):
        root = os.path.join(root, "CUB_200_2011")
        if not os.path.isfile(os.path.join(root, "images.txt")):
            raise ConfigError(f"CUB-200-2011 is not in args.data_path = {cfg.data_path!r}: neither it "
                              "nor its CUB_200_2011/ subfolder holds images.txt; extract "
                              f"CUB_200_2011.tgz (from {CUB_URL}) so that images.txt, "
                              "image_class_labels.txt, train_test_split.txt and images/ are there.")
    images = _read_table(os.path.join(root, "images.txt"), 2)
    labels = _read_table(os.path.join(root, "image_class_labels.txt"), 2)
    is_train = _read_table(os.path.join(root, "train_test_split.txt"), 2)
    try:
        ids = sorted(images, key=int)
        label_of = {i: int(labels[i]) - 1 for i in ids}
        train_of = {i: is_train[i] == "1" for i in ids}
    except (KeyError, ValueError) as e:
        raise ConfigError(f"CUB-200-2011: the text files under {root} disagree or are corrupt "
                          f"(image {e}); restore them from the original archive.") from None
    num_class = max(label_of.values()) + 1
    names = _read_table(os.path.join(root, "classes.txt"), 2) \
        if os.path.isfile(os.path.join(root, "classes.txt")) else {}
    classes = [names.get(str(c + 1), str(c + 1)) for c in range(num_class)]
    samples = {True: [], False: []}
    for i in ids:
        samples[train_of[i]].append((os.path.join(root, "images", images[i]), label_of[i]))
    absent = [path for path, _ in samples[True] + samples[False] if not os.path.isfile(path)]
    if absent:
        raise ConfigError(f"CUB-200-2011: {len(absent)} image(s) listed in images.txt are missing, "
                          f"e.g. {absent[0]}; extract the whole archive into {cfg.data_path!r}.")
    return _files_source(pipe, samples[True], samples[False], classes)
