"""digits32 and train_digits_cnn.py: scikit-learn's digits at 32×32 RGB through the reduced ResNet-18.

The pipelines' transform lists are in test_data_sources.py (PIPELINES), the on-device augmentation's
distribution in test_fast_path.py (IN_MEMORY, SETTINGS) and the shipped args in test_scripts.py, each
beside the other data sets'."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_digits_cnn
import utils.data.readers as R
from data_sources import build_network, dataset_spec
from resnet import ReducedResNet18
from utils.config import check_args
from utils.errors import ConfigError
from utils.run.manifest import check_resume, plain
from utils.run.session import run


def read(cfg):
    """cfg.dataset as its spec reads it (the reader handed the pipeline of cfg's args)."""
    return dataset_spec(cfg.dataset).read(cfg)


ROUNDING = 0.5 / 255  # uint8 storage moves a [0, 1] value by at most this much


def original_digits(seed):
    """The 8×8 digits in [0, 1] and the split, straight from scikit-learn: the oracle."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float64).unsqueeze(1) / 16
    tr, te = train_test_split(np.arange(len(bunch.target)), test_size=0.2, stratify=bunch.target,
                              random_state=seed)
    return x, bunch.target, tr, te


def blurred(x):
    """x blurred by [1, 6, 1]/8 along each axis, edges replicated: what averaging each 4×4 block of
    x's bilinear (pixel-centre) ×4 upsampling gives. Within a block the four sample positions sit
    at ∓3/8 and ∓1/8 of a pixel from the centre, so the neighbour on each side gets (3/8 + 1/8)/4
    = 1/8 of the weight; at the border the position clamps to the edge pixel."""
    k = torch.tensor([1.0, 6.0, 1.0], dtype=x.dtype) / 8
    x = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), k.view(1, 1, 1, 3))
    return F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), k.view(1, 1, 3, 1))


@pytest.fixture(scope="module")
def sources():
    from tests.support.cfg import make_cfg
    return read(make_cfg(dataset="digits32")), R.load_digits(make_cfg())


def test_digits32_has_the_digits_split_labels_and_classes(sources):
    big, small = sources
    assert np.array_equal(big.train_labels, small.train_labels)
    assert np.array_equal(big.test_labels, small.test_labels)
    assert big.class_names == small.class_names == [str(d) for d in range(10)]
    assert big.num_class == 10 and big.input_shape == (3, 32, 32)
    x, labels, tr, te = original_digits(seed=0)
    assert np.array_equal(small.train_labels, labels[tr]) and np.array_equal(small.test_labels,
                                                                              labels[te])
    # the 8×8 demo still reads what it read before the two shared their reader
    mean, std = x[tr].mean(), x[tr].std()
    torch.testing.assert_close(small.train.x.double(), (x[tr] - mean) / std, rtol=0, atol=1e-5)


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits32_images_are_the_digits_upsampled(sources, split):
    """Averaging each 4×4 block of an image gives back its 8×8 digit: exactly the digit blurred by
    [1, 6, 1]/8 (bilinear upsampling, up to uint8 rounding), and the digit itself within 7/16 at
    any pixel (the blur keeps at least (6/8)² = 9/16 of a pixel's own value and values lie in
    [0, 1]) and within 0.1 on average: the blur alone moves a pixel by 0.070 on average here (it
    softens the strokes' edges), while the digit shifted by one pixel, or another digit, is 0.23 to
    0.24 away, so the bound tells the digit in its place from any misplaced or mismatched image."""
    big, _ = sources
    images = getattr(big.tensors, split)
    assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    x, _, tr, te = original_digits(seed=0)
    digits = x[tr if split == "train" else te]
    assert len(images) == len(digits)
    pooled = F.avg_pool2d(images[:, :1].double() / 255, 4)
    assert (pooled - blurred(digits)).abs().max() <= ROUNDING + 1e-9
    error = (pooled - digits).abs()
    assert error.max() <= 7 / 16 + ROUNDING and error.mean() < 0.1
    # not a 4×4 block copy (nearest neighbour would pool back to the digit exactly)
    assert error.max() > 0.1


def test_digits32_statistics_are_its_training_images(sources, cfg_factory):
    """Normalised with the per-channel mean and std of every training pixel on the [0, 1] scale,
    the same under both settings and in the test transform, where the image is only normalised."""
    big, _ = sources
    train = big.tensors.train.double() / 255
    mean = train.mean((0, 2, 3))
    std = train.std((0, 2, 3), unbiased=False)
    stats = big.tensors.stats
    assert stats[0] == pytest.approx(tuple(mean.tolist()), rel=1e-12)
    assert stats[1] == pytest.approx(tuple(std.tolist()), rel=1e-12)
    assert stats[0] == pytest.approx((0.3054,) * 3, abs=1e-4)  # seed 0's split, pinned
    assert stats[1] == pytest.approx((0.3237,) * 3, abs=1e-4)
    corrected = read(cfg_factory(dataset="digits32", augmentation="corrected"))
    assert corrected.tensors.stats == stats
    x, y = big.test[3]
    m, s = (torch.tensor(v)[:, None, None] for v in stats)
    want = (big.tensors.test[3].float() / 255 - m) / s
    assert y == big.test_labels[3] and torch.allclose(x, want, atol=1e-6)


def test_digits32_augmentation_is_fixed_on_resume(cfg_factory):
    """digits32 is augmented, so a resume may not change args.augmentation (unlike the 8×8 digits)."""
    cfg = cfg_factory(dataset="digits32")
    record = {"args": {**plain(cfg), "augmentation": "corrected"}}
    with pytest.raises(ConfigError, match=r"args.augmentation = 'release' but the finished "
                                          r"sessions used 'corrected'"):
        check_resume(cfg, record, "s.json", None)


def test_two_sessions_of_the_script_end_to_end(tmp_path):
    """train_digits_cnn.py's args shrunk to two tasks of two digits, one epoch, small batches."""
    over = dict(num_class=4, num_task=2, memory=8, epochs=1, schedule=[], train_batch=32,
                test_batch=128, adapt_batch=8, device="cpu", checkpoint=str(tmp_path / "results"),
                savepoint=str(tmp_path / "models"))
    args = type("args", (train_digits_cnn.args,), over)
    records = run(args, 0, "train_digits_cnn.py")
    assert [r["session"] for r in records] == [0, 1]
    cfg = check_args(args)
    for t in (0, 1):
        saved = json.load(open(os.path.join(cfg.checkpoint, f"session_{t}.json")))
        assert saved["seen_classes"] == 2 * (t + 1)
        assert saved["num_test_samples"] == 72 * (t + 1)  # 36 test digits a class
        for key in ("acc_task_agnostic", "acc_per_sample", "acc_task_aware", "acc_base"):
            assert math.isfinite(saved[key]) and 0.0 <= saved[key] <= 100.0
    model = build_network(cfg.dataset, (3, 32, 32), cfg.num_class)
    assert isinstance(model, ReducedResNet18)
    state = torch.load(os.path.join(cfg.savepoint, "session_1_model.pt"), weights_only=True)
    model.load_state_dict(state)  # the saved weights are the reduced ResNet-18's
