"""Tiny fake data sets written in each data set's real on-disk format, for the real loading code.

torchvision checks CIFAR-100's and SVHN's files against the MD5 sums of the real archives; the writers
here return the sums of the fake files so a test can point torchvision's tables at them (and a test can
corrupt a file to see the mismatch reported).
"""
import hashlib
import os
import pickle
import struct

import numpy as np


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def fake_images(rng, n, size):
    return rng.randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)


def write_cifar100(root, train_per_class=3, test_per_class=2, num_class=100):
    """<root>/cifar-100-python/{train,test,meta}: pickled dicts with 'data' rows of 3072 bytes
    (1024 red, 1024 green, 1024 blue) and 'fine_labels'. Returns {file name: md5}."""
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    rng = np.random.RandomState(0)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(num_class), per_class)  # classes interleaved, as in the real files
        images = fake_images(rng, len(labels), 32)
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),
                 "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                 "filenames": [f"img_{i}.png" for i in range(len(labels))], "batch_label": name}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{c:03d}" for c in range(num_class)],
                     "coarse_label_names": [f"super_{c}" for c in range(num_class // 5)]}, f)
    return {name: md5(os.path.join(folder, name)) for name in ("train", "test", "meta")}


def point_torchvision_at_cifar100(monkeypatch, sums):
    from torchvision.datasets import CIFAR100
    monkeypatch.setattr(CIFAR100, "train_list", [["train", sums["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", sums["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", dict(CIFAR100.meta, md5=sums["meta"]))


def write_svhn(root, train_per_class=3, test_per_class=2):
    """<root>/{train,test}_32x32.mat: X of shape 32×32×3×N (uint8), y of shape N×1 with 10 for
    the digit 0, as in the real files. Returns ({split: md5}, {split: labels as 0..9})."""
    from scipy.io import savemat
    os.makedirs(root, exist_ok=True)
    rng = np.random.RandomState(1)
    sums, digits = {}, {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(10), per_class)
        images = fake_images(rng, len(labels), 32)
        path = os.path.join(root, f"{split}_32x32.mat")
        savemat(path, {"X": images.transpose(1, 2, 3, 0),
                       "y": np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]})
        sums[split], digits[split] = md5(path), labels
    return sums, digits


def point_torchvision_at_svhn(monkeypatch, sums):
    from torchvision.datasets import SVHN
    table = {split: [url, name, sums.get(split, digest)]
             for split, (url, name, digest) in SVHN.split_list.items()}
    monkeypatch.setattr(SVHN, "split_list", table)


def write_image(path, rng, size, color=None):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = (np.broadcast_to(np.asarray(color, np.uint8), (size, size, 3)) if color is not None
              else rng.randint(0, 256, size=(size, size, 3)).astype(np.uint8))
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


def write_class_folders(root, splits, classes, per_class, size=40, ext=".JPEG"):
    """<root>/<split>/<class>/<image>: the ImageNet / MS-Celeb layout ImageFolder reads.
    ``per_class`` maps split -> images a class."""
    rng = np.random.RandomState(2)
    for split in splits:
        for c in classes:
            for i in range(per_class[split]):
                write_image(os.path.join(root, split, c, f"{c}_{i}{ext}"), rng, size)


def write_identity_folders(root, counts, size=8):
    """<root>/<identity>/<image>.jpg: MS-Celeb-1M's aligned layout, ``counts`` mapping identity ->
    images. Files are written in a shuffled order and each folder also holds a notes.txt, so neither
    creation order nor a count of all files gives the release's cut. Returns {identity: sorted names}."""
    rng = np.random.RandomState(4)
    files = {}
    for identity, count in counts.items():
        names = [f"{k:03d}.jpg" for k in range(count)]
        for name in rng.permutation(names):
            write_image(os.path.join(root, identity, name), rng, size)
        with open(os.path.join(root, identity, "notes.txt"), "w") as f:
            f.write("not an image\n")
        files[identity] = sorted(names)
    return files


def write_cub(root, num_class=6, train_per_class=3, test_per_class=2, size=40):
    """<root>/CUB_200_2011/: images.txt, image_class_labels.txt (1-based), train_test_split.txt,
    classes.txt and images/<NNN.Name>/<file>.jpg, as in the real archive. Images are listed in class
    order but train and test interleave, as they do there. Returns the folder."""
    folder = os.path.join(root, "CUB_200_2011")
    rng = np.random.RandomState(3)
    images, labels, split, classes = [], [], [], []
    for c in range(num_class):
        name = f"{c + 1:03d}.Bird_{c + 1}"
        classes.append(f"{c + 1} {name}")
        for i in range(train_per_class + test_per_class):
            image_id = len(images) + 1
            rel = f"{name}/Bird_{c + 1}_{i:04d}.jpg"
            write_image(os.path.join(folder, "images", rel), rng, size)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(i % 2 == 0 or i >= 2 * test_per_class)}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", classes)):
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def write_fake_mnist(root, per_class_train=3, per_class_test=2):
    """A tiny MNIST in its real on-disk format: idx files under <root>/MNIST/raw/."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = rng.randint(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    return raw
