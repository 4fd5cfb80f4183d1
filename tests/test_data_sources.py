"""Every data set's reader on a tiny fake copy in its real on-disk format, and its missing-data message."""
import os
import random
import urllib.error
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data_sources as S
import utils.data.augmentation as A
import utils.data.readers as R
from incremental_dataloader import IncrementalData
from tests.support import fake_data as F
from utils.errors import ConfigError


def read(cfg):
    """cfg.dataset as its spec reads it (the reader handed the pipeline of cfg's args)."""
    return S.dataset_spec(cfg.dataset).read(cfg)


def offline(monkeypatch, *classes):
    def fail(self, *a, **k):
        raise urllib.error.URLError("no network")
    for cls in classes:
        monkeypatch.setattr(cls, "download", fail)


# The statistics each pipeline normalises with, written out so a changed constant is caught.
RELEASE_CIFAR = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
CIFAR = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalised(image, stats):
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std


# ------------------------------------------------------------------ CIFAR-100

@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    root = tmp_path / "CIFAR100"
    F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(str(root)))
    return root


@pytest.mark.parametrize("setting, stats", [("release", RELEASE_CIFAR), ("corrected", CIFAR)])
def test_cifar100_classes_counts_and_tasks(cifar_root, cfg_factory, setting, stats):
    cfg = cfg_factory(dataset="cifar100", data_path=str(cifar_root), num_class=20,
                      class_per_task=10, num_task=2, memory=40, augmentation=setting)
    src = read(cfg)
    assert src.num_class == 100 and src.input_shape == (3, 32, 32)
    assert src.class_names[:2] == ["class_000", "class_001"] and len(src.class_names) == 100
    assert len(src.train) == 300 and len(src.test) == 200
    assert np.bincount(src.train_labels).tolist() == [3] * 100
    data = IncrementalData(cfg, source=src)
    assert len(data.task_indices(0)) == 30 and len(data.task_indices(1)) == 30
    assert set(data.train_labels[data.task_indices(1)]) == set(range(10, 20))
    assert len(data.seen_test_indices(1)) == 40
    # test transform: the image itself, normalised with the setting's CIFAR-100 statistics
    x, y = data.test_set[5]
    image = src.test.images[5]
    assert y == 5 and torch.allclose(x, normalised(image, stats), atol=1e-6)
    x, _ = data.train_set[0]
    assert x.shape == (3, 32, 32)


def test_cifar100_offline_and_missing(tmp_path, cfg_factory, monkeypatch):
    from torchvision.datasets import CIFAR100
    offline(monkeypatch, CIFAR100)
    cfg = cfg_factory(dataset="cifar100", data_path=str(tmp_path / "none"), num_class=100,
                      class_per_task=10, num_task=10, memory=2000)
    with pytest.raises(ConfigError, match=r"CIFAR-100 is not in args.data_path and could not be "
                       r"downloaded \(URLError\); args.data_path = '.*none' must hold cifar-100-python/ "
                       r".*https://www.cs.toronto.edu/~kriz/cifar.html") as err:
        read(cfg)
    assert "\n" not in str(err.value)


def test_cifar100_corrupt_file(cifar_root, cfg_factory, monkeypatch):
    from torchvision.datasets import CIFAR100
    offline(monkeypatch, CIFAR100)
    path = cifar_root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    cfg = cfg_factory(dataset="cifar100", data_path=str(cifar_root), num_class=100,
                      class_per_task=10, num_task=10, memory=2000)
    with pytest.raises(ConfigError, match=r"CIFAR-100 is corrupt \(its checksum does not match\)"):
        read(cfg)


# ------------------------------------------------------------------ SVHN

@pytest.mark.parametrize("setting, stats", [("release", IMAGENET), ("corrected", SVHN)])
def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, cfg_factory, monkeypatch, setting,
                                                     stats):
    sums, digits = F.write_svhn(str(tmp_path))
    F.point_torchvision_at_svhn(monkeypatch, sums)
    cfg = cfg_factory(dataset="svhn", data_path=str(tmp_path), augmentation=setting)
    src = read(cfg)
    assert src.num_class == 10 and src.input_shape == (3, 32, 32)
    assert src.train_labels.tolist() == digits["train"].tolist()
    assert len(src.test) == 20 and src.class_names == [str(d) for d in range(10)]
    from scipy.io import loadmat
    raw = loadmat(str(tmp_path / "test_32x32.mat"))["X"][..., 3]  # H×W×C of test image 3
    x, y = src.test[3]
    assert y == 3 and torch.allclose(x, normalised(raw, stats), atol=1e-6)
    data = IncrementalData(cfg, source=src)
    assert sorted(set(data.train_labels[data.task_indices(2)])) == [4, 5]


def test_svhn_missing(tmp_path, cfg_factory, monkeypatch):
    from torchvision.datasets import SVHN
    offline(monkeypatch, SVHN)
    with pytest.raises(ConfigError, match=r"SVHN is not in args.data_path .* must hold "
                       r"train_32x32.mat and test_32x32.mat \(from http://ufldl.stanford.edu"):
        read(cfg_factory(dataset="svhn", data_path=str(tmp_path)))


# ------------------------------------------------------------------ ImageNet and MS-Celeb folders

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]


@pytest.fixture
def imagenet_root(tmp_path):
    F.write_class_folders(str(tmp_path / "ImageNet"), ("train", "val"), WNIDS,
                          {"train": 3, "val": 2})
    return tmp_path / "ImageNet"


def imagenet_cfg(cfg_factory, root, **over):
    fields = dict(dataset="imagenet", data_path=str(root), num_class=4, class_per_task=2,
                  num_task=2, memory=8, image_size=32)
    fields.update(over)
    return cfg_factory(**fields)


def test_imagenet_class_folders(imagenet_root, cfg_factory):
    src = read(imagenet_cfg(cfg_factory, imagenet_root))
    assert src.class_names == WNIDS and src.num_class == 6 and src.input_shape == (3, 32, 32)
    assert len(src.train) == 18 and len(src.test) == 12
    assert np.bincount(src.test_labels).tolist() == [2] * 6
    x, y = src.test[0]
    assert x.shape == (3, 32, 32) and y == 0
    x, _ = src.train[7]
    assert x.shape == (3, 32, 32)
    for setting, side in (("release", 112), ("corrected", 224)):  # unless args.image_size says
        full = read(imagenet_cfg(cfg_factory, imagenet_root, image_size=None,
                                            augmentation=setting))
        assert full.input_shape == (3, side, side)


def test_imagenet_subset_from_a_seeded_order_and_reused_class_list(imagenet_root, cfg_factory,
                                                                    tmp_path):
    cfg = imagenet_cfg(cfg_factory, imagenet_root, class_order="shuffled", seed=1993)
    data = IncrementalData(cfg)
    expected = np.random.RandomState(1993).permutation(6)[:4].tolist()
    assert data.class_order == expected
    assert data.class_names == [WNIDS[c] for c in expected]
    listing = tmp_path / "classes.txt"
    listing.write_text("\n".join(reversed(data.class_names)) + "\n")
    reused = IncrementalData(imagenet_cfg(cfg_factory, imagenet_root, class_order=str(listing)))
    assert reused.class_order == expected[::-1]
    listing.write_text("n01440764\nn99999999\n")
    with pytest.raises(ConfigError, match=r"args.class_order = '.*classes.txt' names classes the "
                       r"data set does not have \(\['n99999999'\]\)"):
        IncrementalData(imagenet_cfg(cfg_factory, imagenet_root, class_order=str(listing)))
    listing.write_text("n01440764\nn01443537\n")
    with pytest.raises(ConfigError, match=r"lists 2 classes but args.num_class = 4"):
        IncrementalData(imagenet_cfg(cfg_factory, imagenet_root, class_order=str(listing)))


def test_imagenet_missing_and_mismatched_folders(imagenet_root, tmp_path, cfg_factory):
    with pytest.raises(ConfigError, match=r"ImageNet: .*nowhere/train is not a folder; "
                       r"args.data_path = '.*nowhere' must hold train/<class>/<image> and "
                       r"val/<class>/<image> folders \(from https://image-net.org"):
        read(imagenet_cfg(cfg_factory, tmp_path / "nowhere"))
    for f in os.listdir(imagenet_root / "val" / WNIDS[2]):
        os.remove(imagenet_root / "val" / WNIDS[2] / f)
    os.rmdir(imagenet_root / "val" / WNIDS[2])
    with pytest.raises(ConfigError, match=r"the class folders of .*val differ from those of "
                       r".*train \(e.g. \['n01484850'\]\)"):
        read(imagenet_cfg(cfg_factory, imagenet_root))


def test_empty_class_folder_is_named(tmp_path, cfg_factory):
    root = tmp_path / "Celeb"
    F.write_class_folders(str(root), ("train", "test"), ["a", "b"], {"train": 2, "test": 1})
    (root / "test" / "b" / "b_0.JPEG").unlink()
    with pytest.raises(ConfigError, match=r"MS-Celeb-10K: .*test holds no usable "
                       r"<class>/<image> folders \(.*\); args.data_path must hold train/<class>/<image> "
                       r"and test/<class>/<image> folders"):
        read(cfg_factory(dataset="celeb", data_path=str(root), num_class=2,
                                 class_per_task=1, num_task=2, memory=4))


def test_celeb_folders_and_estimated_statistics(tmp_path, cfg_factory):
    root = tmp_path / "Celeb"
    rng = np.random.RandomState(0)
    colors = {"id_a": (255, 0, 51), "id_b": (0, 102, 255)}
    for split, count in (("train", 3), ("test", 1)):
        for name, color in colors.items():
            for i in range(count):
                F.write_image(str(root / split / name / f"{i}.png"), rng, 20, color)
    cfg = cfg_factory(dataset="celeb", data_path=str(root), num_class=2, class_per_task=1,
                      num_task=2, memory=4, image_size=16, augmentation="corrected")
    src = read(cfg)
    assert src.class_names == ["id_a", "id_b"] and len(src.train) == 6 and len(src.test) == 2
    # half the images are one colour and half the other: per-channel mean and std in closed form
    a, b = np.array(colors["id_a"]) / 255, np.array(colors["id_b"]) / 255
    x, _ = src.test[0]
    mean, std = (a + b) / 2, np.abs(a - b) / 2
    want = (a - mean) / np.maximum(std, 1e-6)
    for c in range(3):
        if std[c] > 0:
            assert x[c].mean().item() == pytest.approx(want[c], abs=1e-3)


# ------------------------------------------------------------------ CUB-200-2011

def cub_cfg(cfg_factory, root, **over):
    fields = dict(dataset="cub200", data_path=str(root), num_class=6, class_per_task=3, num_task=2,
                  memory=12, image_size=32)
    fields.update(over)
    return cfg_factory(**fields)


def test_cub_text_layout(tmp_path, cfg_factory):
    F.write_cub(str(tmp_path))
    src = read(cub_cfg(cfg_factory, tmp_path))  # data_path above CUB_200_2011/ works too
    assert src.num_class == 6 and src.class_names[0] == "001.Bird_1"
    assert np.bincount(src.train_labels).tolist() == [3] * 6
    assert np.bincount(src.test_labels).tolist() == [2] * 6
    # train_test_split.txt decides: images 0, 2 and 4 of each class train, 1 and 3 test
    assert [os.path.basename(p) for p, _ in src.test.samples[:2]] == ["Bird_1_0001.jpg",
                                                                       "Bird_1_0003.jpg"]
    x, y = src.train[3]
    assert x.shape == (3, 32, 32) and y == 1
    same = read(cub_cfg(cfg_factory, tmp_path / "CUB_200_2011"))
    assert same.test.samples == src.test.samples


def test_cub_missing_and_corrupt_files(tmp_path, cfg_factory):
    with pytest.raises(ConfigError, match=r"CUB-200-2011 is not in args.data_path = '.*': neither it "
                       r"nor its CUB_200_2011/ subfolder holds images.txt; extract CUB_200_2011.tgz "
                       r"\(from https://www.vision.caltech.edu/datasets/cub_200_2011/\) so that "
                       r"images.txt, image_class_labels.txt, train_test_split.txt and images/"):
        read(cub_cfg(cfg_factory, tmp_path))
    folder = F.write_cub(str(tmp_path))
    os.rename(os.path.join(folder, "train_test_split.txt"), os.path.join(folder, "split.bak"))
    with pytest.raises(ConfigError, match=r"CUB-200-2011: .*train_test_split.txt is missing; "
                       r"restore it from the CUB_200_2011 archive"):
        read(cub_cfg(cfg_factory, tmp_path))
    os.rename(os.path.join(folder, "split.bak"), os.path.join(folder, "train_test_split.txt"))
    with open(os.path.join(folder, "image_class_labels.txt"), "a") as f:
        f.write("31\n")
    with pytest.raises(ConfigError, match=r"line 31 of .*image_class_labels.txt is corrupt"):
        read(cub_cfg(cfg_factory, tmp_path))
    F.write_cub(str(tmp_path / "again"))
    os.remove(tmp_path / "again" / "CUB_200_2011" / "images" / "002.Bird_2" / "Bird_2_0004.jpg")
    with pytest.raises(ConfigError, match=r"1 image\(s\) listed in images.txt are missing, e.g. "
                       r".*Bird_2_0004.jpg"):
        read(cub_cfg(cfg_factory, tmp_path / "again"))


# ------------------------------------------------------------------ MS-Celeb-1M identity folders

# Sorted, m.0a..m.0e; RandomState(3).permutation(5) = [3, 4, 1, 0, 2] walks d, e, b, a, c. Only more
# than 45 images qualify, so b (45) and e (10) are passed over: d, a, c kept, in that order, and
# numbered by name: a 0, c 1, d 2.
IDENTITY_COUNTS = {"m.0a": 46, "m.0b": 45, "m.0c": 50, "m.0d": 47, "m.0e": 10}
KEPT = ["m.0a", "m.0c", "m.0d"]  # in the walk's order


def celeb_cfg(cfg_factory, root, **over):
    fields = dict(dataset="celeb", data_path=str(root), num_class=2, class_per_task=1, num_task=2,
                  memory=4, image_size=16)
    fields.update(over)
    return cfg_factory(**fields)


def test_celeb_identity_folders_as_the_release_cut_them(tmp_path, cfg_factory, monkeypatch):
    files = F.write_identity_folders(str(tmp_path), IDENTITY_COUNTS)
    walk = list(range(5))
    random.Random(3).shuffle(walk)  # the release's generator: Python's random, seeded 3
    assert walk == [0, 2, 3, 4, 1]
    src = read(celeb_cfg(cfg_factory, tmp_path))
    assert src.class_names == sorted(KEPT) and src.num_class == 3 and src.input_shape == (3, 16, 16)
    for label, name in enumerate(sorted(KEPT)):
        for split, want in ((src.train, files[name][:30]), (src.test, files[name][30:45])):
            paths = [p for p, y in split.samples if y == label]
            assert [os.path.basename(p) for p in paths] == want
            assert {os.path.basename(os.path.dirname(p)) for p in paths} == {name}
    assert np.bincount(src.train_labels).tolist() == [30] * 3
    assert np.bincount(src.test_labels).tolist() == [15] * 3
    x, y = src.train[31]  # the second image of m.0c, kept second
    assert x.shape == (3, 16, 16) and y == 1
    monkeypatch.setattr(R, "CELEB_IDENTITIES", 2)  # the walk stops once enough are kept
    assert read(celeb_cfg(cfg_factory, tmp_path)).class_names == sorted(KEPT[:2])


def test_celeb_classes_numbered_by_name_as_strings(tmp_path, cfg_factory):
    """The release numbered identities by np.unique over their names as strings: '10' before '2'.
    Sorted, the folders are 1, 10, 2, 20, 3; the walk [0, 2, 3, 4, 1] visits 1, 2, 20, 3, 10 and
    passes over 3 (45 images). Kept order, numeric order and string order all differ."""
    files = F.write_identity_folders(str(tmp_path), {"1": 46, "10": 47, "2": 48, "3": 45, "20": 46})
    names, train, test = R.celeb_identities(str(tmp_path))
    assert names == ["1", "10", "2", "20"]
    for split in (train, test):
        for path, label in split:
            assert label == names.index(os.path.basename(os.path.dirname(path)))
        rows = np.array([[p, os.path.basename(os.path.dirname(p))] for p, _ in split])
        classes, release_labels = np.unique(rows[:, 1], return_inverse=True)  # the release's numbering
        assert classes.tolist() == names and [y for _, y in split] == release_labels.tolist()
    assert names.index("10") < names.index("2")
    # which images go where is the walk's cut, unchanged by the numbering
    folders = [os.path.basename(os.path.dirname(p)) for p, _ in train]
    assert list(dict.fromkeys(folders)) == ["1", "2", "20", "10"]
    for name in names:
        assert [os.path.basename(p) for p, y in train if y == names.index(name)] == files[name][:30]
        assert [os.path.basename(p) for p, y in test if y == names.index(name)] == files[name][30:45]


def test_celeb_identity_folders_none_qualifies(tmp_path, cfg_factory):
    F.write_identity_folders(str(tmp_path / "few"), {"m.01": 45, "m.02": 3})
    (tmp_path / "few" / "train").mkdir()  # train/ without test/ is not the split layout
    for root in (tmp_path / "few", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match=r"^MS-Celeb-10K: args.data_path = '.*' holds neither "
                           r"train/ and test/ folders nor an identity folder with at least 46 images; "
                           r"put there train/<identity>/<image> and test/<identity>/<image> folders, "
                           r"or MS-Celeb-1M's aligned faces as one folder per identity \(those with at "
                           r"least 46 images are used\).$"):
            read(celeb_cfg(cfg_factory, root))


# ------------------------------------------------------------------ each pipeline, both settings

FLIP = ("RandomHorizontalFlip", 0.5)
ROTATE = ("RandomRotation", (-10.0, 10.0), "nearest", 0, False)
JITTER = ("ColorJitter", (1 - 63 / 255, 1 + 63 / 255), None, None, None)
TENSOR = ("ToTensor",)
ESTIMATE = ("Normalize", "estimated")
MEASURE = ("Normalize", "measured")  # digits32: its whole training set's statistics (test_digits_cnn)


def crop(side, padding):
    return ("RandomCrop", (side, side), padding, 0)


def scaled_crop(side):
    return ("RandomResizedCrop", (side, side), (0.08, 1.0), (0.75, 4 / 3))


def resize(size):
    return ("Resize", size)


def centre(side):
    return ("CenterCrop", (side, side))


def norm(stats):
    return ("Normalize", *stats)


# (data set, args.augmentation, args.image_size) -> (train transforms, test transforms), in order
PIPELINES = {
    ("cifar100", "release", None): ([crop(32, 4), FLIP, ROTATE, TENSOR, norm(RELEASE_CIFAR)],
                                    [TENSOR, norm(RELEASE_CIFAR)]),
    ("cifar100", "corrected", None): ([crop(32, 4), FLIP, TENSOR, norm(CIFAR)],
                                      [TENSOR, norm(CIFAR)]),
    ("svhn", "release", None): ([crop(32, 4), FLIP, ROTATE, TENSOR, norm(IMAGENET)],
                                [TENSOR, norm(IMAGENET)]),
    ("svhn", "corrected", None): ([crop(32, 2), ROTATE, TENSOR, norm(SVHN)], [TENSOR, norm(SVHN)]),
    ("imagenet", "release", None): (
        [resize(120), scaled_crop(112), FLIP, ROTATE, TENSOR, norm(IMAGENET)],
        [resize(115), centre(112), TENSOR, norm(IMAGENET)]),
    ("imagenet", "release", 32): (  # 32·120/112 = 34.3, 32·115/112 = 32.9
        [resize(34), scaled_crop(32), FLIP, ROTATE, TENSOR, norm(IMAGENET)],
        [resize(33), centre(32), TENSOR, norm(IMAGENET)]),
    ("imagenet", "corrected", None): ([scaled_crop(224), FLIP, TENSOR, norm(IMAGENET)],
                                      [resize(256), centre(224), TENSOR, norm(IMAGENET)]),
    ("imagenet", "corrected", 32): ([scaled_crop(32), FLIP, TENSOR, norm(IMAGENET)],
                                    [resize(36), centre(32), TENSOR, norm(IMAGENET)]),
    ("celeb", "release", None): (
        [resize((112, 112)), crop(112, 4), FLIP, ROTATE, TENSOR, norm(RELEASE_CIFAR)],
        [resize((112, 112)), TENSOR, norm(RELEASE_CIFAR)]),
    ("celeb", "release", 32): (
        [resize((32, 32)), crop(32, 4), FLIP, ROTATE, TENSOR, norm(RELEASE_CIFAR)],
        [resize((32, 32)), TENSOR, norm(RELEASE_CIFAR)]),
    ("celeb", "corrected", None): ([resize((112, 112)), crop(112, 8), FLIP, TENSOR, ESTIMATE],
                                   [resize((112, 112)), TENSOR, ESTIMATE]),
    ("celeb", "corrected", 32): ([resize((32, 32)), crop(32, 2), FLIP, TENSOR, ESTIMATE],
                                 [resize((32, 32)), TENSOR, ESTIMATE]),
    ("cub200", "release", None): ([resize(230), scaled_crop(224), FLIP, ROTATE, JITTER, TENSOR],
                                  [resize(230), centre(224), TENSOR]),
    ("cub200", "release", 32): ([resize(33), scaled_crop(32), FLIP, ROTATE, JITTER, TENSOR],
                                [resize(33), centre(32), TENSOR]),  # 32·230/224 = 32.9
    ("cub200", "corrected", None): ([scaled_crop(224), FLIP, TENSOR, ESTIMATE],
                                    [resize(256), centre(224), TENSOR, ESTIMATE]),
    ("cub200", "corrected", 32): ([scaled_crop(32), FLIP, TENSOR, ESTIMATE],
                                  [resize(36), centre(32), TENSOR, ESTIMATE]),
    # the release's SVHN pipeline; corrected: SVHN's corrected one (a mirrored digit is another)
    ("digits32", "release", None): ([crop(32, 4), FLIP, ROTATE, TENSOR, MEASURE],
                                    [TENSOR, MEASURE]),
    ("digits32", "corrected", None): ([crop(32, 2), ROTATE, TENSOR, MEASURE], [TENSOR, MEASURE]),
}


PARAMETERS = {"RandomCrop": ("size", "padding", "fill"), "RandomHorizontalFlip": ("p",),
              "RandomRotation": ("degrees", "interpolation", "fill", "expand"),
              "ColorJitter": ("brightness", "contrast", "saturation", "hue"),
              "RandomResizedCrop": ("size", "scale", "ratio"), "Resize": ("size",),
              "CenterCrop": ("size",), "ToTensor": (), "Normalize": ("mean", "std")}


def describe(transform, estimated, marker=ESTIMATE):
    """Each transform's type and the parameters that define it, lists as tuples; a Normalize by the
    ``estimated`` statistics is written ``marker`` (ESTIMATE or MEASURE)."""
    out = []
    for t in transform.transforms:
        name = type(t).__name__
        values = [getattr(t, p) for p in PARAMETERS[name]]
        values = tuple(getattr(v, "value", tuple(v) if isinstance(v, list) else v) for v in values)
        if name == "Normalize" and estimated is not None:
            assert values == estimated
            values = marker[1:]
        out.append((name, *values))
    return out


def fake_source(dataset, root, monkeypatch, cfg_factory, **over):
    """``dataset`` read from a tiny fake copy under ``root``."""
    if dataset == "cifar100":
        F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(str(root)))
    elif dataset == "svhn":
        F.point_torchvision_at_svhn(monkeypatch, F.write_svhn(str(root))[0])
    elif dataset == "cub200":
        F.write_cub(str(root), num_class=2, train_per_class=2, test_per_class=1)
    elif dataset == "digits32":
        pass  # ships with scikit-learn
    else:
        F.write_class_folders(str(root), ("train", "val" if dataset == "imagenet" else "test"),
                              ["a", "b"], {"train": 2, "val": 1, "test": 1}, size=20)
    cfg = cfg_factory(dataset=dataset, data_path=str(root), num_class=2, class_per_task=1,
                      num_task=2, memory=4, **over)
    return cfg, S.dataset_spec(dataset).read(cfg)


@pytest.mark.parametrize("dataset, setting, size", sorted(PIPELINES, key=str))
def test_each_pipeline_is_exactly_as_described(dataset, setting, size, tmp_path, monkeypatch,
                                               cfg_factory):
    cfg, src = fake_source(dataset, tmp_path, monkeypatch, cfg_factory, augmentation=setting,
                           image_size=size)
    side = S.dataset_spec(dataset).image_size(cfg)
    train, test = PIPELINES[dataset, setting, size]
    estimated, marker = None, ESTIMATE
    if ESTIMATE in test:  # measured on the training images
        estimated = A.estimate_stats(src.train.samples, S.dataset_spec(dataset).pipeline_for(cfg))
    if MEASURE in test:  # the reader's own; test_digits_cnn.py checks them against the images
        estimated, marker = src.tensors.stats, MEASURE
    assert describe(src.train.transform, estimated, marker) == train
    assert describe(src.test.transform, estimated, marker) == test
    assert describe(src.train_plain.transform, estimated, marker) == test
    assert src.input_shape == (3, side, side) and src.train[0][0].shape == (3, side, side)


@pytest.mark.parametrize("setting", ["release", "corrected"])
def test_default_image_size_follows_the_pipeline(setting, cfg_factory):
    defaults = {"imagenet": 112 if setting == "release" else 224, "celeb": 112, "cub200": 224,
                "cifar100": 32, "svhn": 32, "mnist": 28, "digits": 8, "digits32": 32}
    for dataset, side in defaults.items():
        cfg = cfg_factory(dataset=dataset, augmentation=setting)
        assert S.dataset_spec(dataset).image_size(cfg) == side
    for dataset in ("imagenet", "celeb", "cub200"):
        cfg = cfg_factory(dataset=dataset, augmentation=setting, image_size=48)
        assert S.dataset_spec(dataset).image_size(cfg) == 48


def test_mnist_and_digits_are_the_same_under_both_settings(tmp_path, cfg_factory):
    F.write_fake_mnist(tmp_path)
    raw = np.frombuffer((tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()[16:],
                        np.uint8).reshape(-1, 1, 28, 28)
    want = (torch.from_numpy(raw.copy()).float() / 255 - 0.1307) / 0.3081
    for setting in ("release", "corrected"):
        mnist = R.load_mnist(cfg_factory(dataset="mnist", data_path=str(tmp_path),
                                         augmentation=setting))
        assert mnist.train.transform is None and mnist.tensors.augment is None
        torch.testing.assert_close(mnist.train.x, want, rtol=0, atol=1e-6)
    digits = [R.load_digits(cfg_factory(augmentation=s)) for s in ("release", "corrected")]
    assert torch.equal(digits[0].train.x, digits[1].train.x) and digits[0].train.transform is None


def pipeline_cfg(setting, size):
    """Just what a spec's pipeline reads of the args."""
    return SimpleNamespace(augmentation=setting, image_size=size)


def test_release_cifar_train_transform_is_a_padded_crop_a_flip_and_a_rotation():
    """Replayed from the same seed: pad 4 and crop, maybe mirror, rotate (nearest, zero fill),
    normalise with the release's values."""
    from PIL import Image
    from torchvision.transforms import functional as TF
    train, _ = S.DATASETS["cifar100"].pipeline_for(pipeline_cfg("release", 32)).transforms()
    image = Image.fromarray(F.fake_images(np.random.RandomState(0), 1, 32)[0])
    flips, angles = set(), []
    for seed in range(12):
        torch.manual_seed(seed)
        got = train(image)
        torch.manual_seed(seed)
        top, left = (int(torch.randint(0, 9, (1,))) for _ in range(2))
        flip = bool(torch.rand(1) < 0.5)
        angle = float(torch.empty(1).uniform_(-10, 10))
        want = TF.crop(TF.pad(image, 4), top, left, 32, 32)
        want = TF.rotate(TF.hflip(want) if flip else want, angle)
        assert torch.equal(got, TF.normalize(TF.to_tensor(want), *RELEASE_CIFAR))
        flips.add(flip)
        angles.append(abs(angle))
    assert flips == {True, False} and max(angles) > 5


def test_release_faces_resize_is_a_no_op_on_112_px_faces():
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF
    face = Image.fromarray(F.fake_images(np.random.RandomState(0), 1, 112)[0])
    assert np.asarray(T.Resize((112, 112))(face)).tobytes() == np.asarray(face).tobytes()
    _, test = S.DATASETS["celeb"].pipeline_for(pipeline_cfg("release", 112)).transforms()
    assert torch.equal(test(face), TF.normalize(TF.to_tensor(face), *RELEASE_CIFAR))
