"""What a data set is once read: the ``Source`` every reader returns, and the ``Dataset`` types that
hold its samples (a float tensor, a uint8 image array, image files)."""
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class Tensors:
    """A small data set as two tensors, for ``args.gpu_data``: images N×C×H×W, either uint8 (scaled to
    [0, 1] and normalised with ``stats`` batch by batch) or float (already normalised, ``stats`` None),
    and the training set's ``Augmentation`` (None: none; see ``augment_batch``)."""
    train: torch.Tensor
    test: torch.Tensor
    augment: object = None  # utils.data.augmentation.Augmentation
    stats: tuple = None


@dataclass
class Source:
    """One data set as read from disk: what the incremental scenario is built from."""
    train: Dataset          # training samples, training transforms, original labels
    train_plain: Dataset    # the same samples with test transforms (exemplar features)
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    num_class: int          # classes the data set holds
    input_shape: tuple
    class_names: list = None  # name of each original label (folder name, wnid, digit)
    tensors: Tensors = None   # the same images as tensors (small data sets only), for args.gpu_data


class TensorData(Dataset):
    """Samples of a small data set held as one float tensor, with their original labels."""

    def __init__(self, x, labels, transform=None):
        self.x, self.labels, self.transform = x, np.asarray(labels, dtype=np.int64), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.x[i]
        return (self.transform(x) if self.transform else x), int(self.labels[i])


class ImageArray(Dataset):
    """Images held in memory as one uint8 N×H×W×C array (CIFAR-100, SVHN), decoded to PIL on demand."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, np.asarray(labels, np.int64), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class ImageFiles(Dataset):
    """Images read from files: ``samples`` is a list of (path, label), shared between transforms."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform
        self.labels = np.asarray([label for _, label in samples], np.int64)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), int(label)
