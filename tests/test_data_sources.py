"""Every data set's reader on a tiny fake copy in its real on-disk format, and its missing-data message."""
import os
import urllib.error

import numpy as np
import pytest
import torch

import data_sources as S
import fake_data as F
from incremental_dataloader import IncrementalData
from utils.errors import ConfigError


def offline(monkeypatch, *classes):
    def fail(self, *a, **k):
        raise urllib.error.URLError("no network")
    for cls in classes:
        monkeypatch.setattr(cls, "download", fail)


def transforms_for(kind="cifar"):
    return S._transforms(kind, 32, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


def normalised(image, stats):
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std


# ------------------------------------------------------------------ CIFAR-100

@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    root = tmp_path / "CIFAR100"
    F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(str(root)))
    return root


def test_cifar100_classes_counts_and_tasks(cifar_root, cfg_factory):
    cfg = cfg_factory(dataset="cifar100", data_path=str(cifar_root), num_class=20,
                      class_per_task=10, num_task=2, memory=40)
    src = S.load_cifar100(cfg)
    assert src.num_class == 100 and src.input_shape == (3, 32, 32)
    assert src.class_names[:2] == ["class_000", "class_001"] and len(src.class_names) == 100
    assert len(src.train) == 300 and len(src.test) == 200
    assert np.bincount(src.train_labels).tolist() == [3] * 100
    data = IncrementalData(cfg, source=src)
    assert len(data.task_indices(0)) == 30 and len(data.task_indices(1)) == 30
    assert set(data.train_labels[data.task_indices(1)]) == set(range(10, 20))
    assert len(data.seen_test_indices(1)) == 40
    # test transform: the image itself, normalised with CIFAR-100's statistics
    x, y = data.test_set[5]
    image = src.test.images[5]
    assert y == 5 and torch.allclose(x, normalised(image, S.CIFAR100_STATS), atol=1e-5)
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
        S.load_cifar100(cfg)
    assert "\n" not in str(err.value)


def test_cifar100_corrupt_file(cifar_root, cfg_factory, monkeypatch):
    from torchvision.datasets import CIFAR100
    offline(monkeypatch, CIFAR100)
    path = cifar_root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    cfg = cfg_factory(dataset="cifar100", data_path=str(cifar_root), num_class=100,
                      class_per_task=10, num_task=10, memory=2000)
    with pytest.raises(ConfigError, match=r"CIFAR-100 is corrupt \(its checksum does not match\)"):
        S.load_cifar100(cfg)


# ------------------------------------------------------------------ SVHN

def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, cfg_factory, monkeypatch):
    sums, digits = F.write_svhn(str(tmp_path))
    F.point_torchvision_at_svhn(monkeypatch, sums)
    cfg = cfg_factory(dataset="svhn", data_path=str(tmp_path))
    src = S.load_svhn(cfg)
    assert src.num_class == 10 and src.input_shape == (3, 32, 32)
    assert src.train_labels.tolist() == digits["train"].tolist()
    assert len(src.test) == 20 and src.class_names == [str(d) for d in range(10)]
    from scipy.io import loadmat
    raw = loadmat(str(tmp_path / "test_32x32.mat"))["X"][..., 3]  # H×W×C of test image 3
    x, y = src.test[3]
    assert y == 3 and torch.allclose(x, normalised(raw, S.SVHN_STATS), atol=1e-5)
    data = IncrementalData(cfg, source=src)
    assert sorted(set(data.train_labels[data.task_indices(2)])) == [4, 5]


def test_svhn_digits_are_never_flipped():
    from torchvision import transforms as T
    train, _ = transforms_for("digits")
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)
    assert any(isinstance(t, T.RandomRotation) for t in train.transforms)
    cifar_train, _ = transforms_for("cifar")
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in cifar_train.transforms)


def test_svhn_missing(tmp_path, cfg_factory, monkeypatch):
    from torchvision.datasets import SVHN
    offline(monkeypatch, SVHN)
    with pytest.raises(ConfigError, match=r"SVHN is not in args.data_path .* must hold "
                       r"train_32x32.mat and test_32x32.mat \(from http://ufldl.stanford.edu"):
        S.load_svhn(cfg_factory(dataset="svhn", data_path=str(tmp_path)))


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
    src = S.load_imagenet(imagenet_cfg(cfg_factory, imagenet_root))
    assert src.class_names == WNIDS and src.num_class == 6 and src.input_shape == (3, 32, 32)
    assert len(src.train) == 18 and len(src.test) == 12
    assert np.bincount(src.test_labels).tolist() == [2] * 6
    x, y = src.test[0]
    assert x.shape == (3, 32, 32) and y == 0
    x, _ = src.train[7]
    assert x.shape == (3, 32, 32)
    full = S.load_imagenet(imagenet_cfg(cfg_factory, imagenet_root, image_size=None))
    assert full.input_shape == (3, 224, 224)  # the standard crop unless args.image_size says


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
        S.load_imagenet(imagenet_cfg(cfg_factory, tmp_path / "nowhere"))
    for f in os.listdir(imagenet_root / "val" / WNIDS[2]):
        os.remove(imagenet_root / "val" / WNIDS[2] / f)
    os.rmdir(imagenet_root / "val" / WNIDS[2])
    with pytest.raises(ConfigError, match=r"the class folders of .*val differ from those of "
                       r".*train \(e.g. \['n01484850'\]\)"):
        S.load_imagenet(imagenet_cfg(cfg_factory, imagenet_root))


def test_empty_class_folder_is_named(tmp_path, cfg_factory):
    root = tmp_path / "Celeb"
    F.write_class_folders(str(root), ("train", "test"), ["a", "b"], {"train": 2, "test": 1})
    (root / "test" / "b" / "b_0.JPEG").unlink()
    with pytest.raises(ConfigError, match=r"MS-Celeb-10K: .*test holds no usable "
                       r"<class>/<image> folders \(.*\); args.data_path must hold train/<class>/<image> "
                       r"and test/<class>/<image> folders"):
        S.load_celeb(cfg_factory(dataset="celeb", data_path=str(root), num_class=2,
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
                      num_task=2, memory=4, image_size=16)
    src = S.load_celeb(cfg)
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
    src = S.load_cub(cub_cfg(cfg_factory, tmp_path))  # data_path above CUB_200_2011/ works too
    assert src.num_class == 6 and src.class_names[0] == "001.Bird_1"
    assert np.bincount(src.train_labels).tolist() == [3] * 6
    assert np.bincount(src.test_labels).tolist() == [2] * 6
    # train_test_split.txt decides: images 0, 2 and 4 of each class train, 1 and 3 test
    assert [os.path.basename(p) for p, _ in src.test.samples[:2]] == ["Bird_1_0001.jpg",
                                                                       "Bird_1_0003.jpg"]
    x, y = src.train[3]
    assert x.shape == (3, 32, 32) and y == 1
    same = S.load_cub(cub_cfg(cfg_factory, tmp_path / "CUB_200_2011"))
    assert same.test.samples == src.test.samples


def test_cub_missing_and_corrupt_files(tmp_path, cfg_factory):
    with pytest.raises(ConfigError, match=r"CUB-200-2011 is not in args.data_path = '.*': neither it "
                       r"nor its CUB_200_2011/ subfolder holds images.txt; extract CUB_200_2011.tgz "
                       r"\(from https://www.vision.caltech.edu/datasets/cub_200_2011/\) so that "
                       r"images.txt, image_class_labels.txt, train_test_split.txt and images/"):
        S.load_cub(cub_cfg(cfg_factory, tmp_path))
    folder = F.write_cub(str(tmp_path))
    os.rename(os.path.join(folder, "train_test_split.txt"), os.path.join(folder, "split.bak"))
    with pytest.raises(ConfigError, match=r"CUB-200-2011: .*train_test_split.txt is missing; "
                       r"restore it from the CUB_200_2011 archive"):
        S.load_cub(cub_cfg(cfg_factory, tmp_path))
    os.rename(os.path.join(folder, "split.bak"), os.path.join(folder, "train_test_split.txt"))
    with open(os.path.join(folder, "image_class_labels.txt"), "a") as f:
        f.write("31\n")
    with pytest.raises(ConfigError, match=r"line 31 of .*image_class_labels.txt is corrupt"):
        S.load_cub(cub_cfg(cfg_factory, tmp_path))
    F.write_cub(str(tmp_path / "again"))
    os.remove(tmp_path / "again" / "CUB_200_2011" / "images" / "002.Bird_2" / "Bird_2_0004.jpg")
    with pytest.raises(ConfigError, match=r"1 image\(s\) listed in images.txt are missing, e.g. "
                       r".*Bird_2_0004.jpg"):
        S.load_cub(cub_cfg(cfg_factory, tmp_path / "again"))
