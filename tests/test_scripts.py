"""Every train_<dataset>.py: its shipped args, and two tasks end to end on fake data in the real format."""
import importlib
import json
import os

import pytest
import torch

from data_sources import build_network, dataset_spec
from resnet import CelebResNet18, ReducedResNet18, ResNet18
from tests.support import fake_data as F
from utils.config import check_args
from utils.run.session import run

# The hyper-parameters the scripts must ship (the release's, where it had the data set).
SHIPPED = {
    "train_cifar": dict(dataset="cifar100", num_class=100, class_per_task=10, num_task=10,
                        optimizer="radam", lr=0.01, epochs=70, schedule=[20, 40, 60], gamma=0.2,
                        train_batch=128, memory=2000, beta=1.0, r=1),
    "train_svhn": dict(dataset="svhn", num_class=10, class_per_task=2, num_task=5,
                       optimizer="radam", lr=0.01, epochs=20, schedule=[5, 10, 15], gamma=0.2,
                       train_batch=256, memory=2000, beta=1.0, r=1),
    "train_imagenet": dict(dataset="imagenet", num_class=100, class_per_task=10, num_task=10,
                           class_order="shuffled"),
    "train_celeb": dict(dataset="celeb", num_class=10000, class_per_task=1000, num_task=10,
                        memory=50000, optimizer="radam", lr=0.01, epochs=70,
                        train_batch=256, beta=1.0),
    "train_cub": dict(dataset="cub200", num_class=200, num_task=10),
    "train_mnist": dict(dataset="mnist", num_class=10, class_per_task=2, num_task=5,
                        optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=20,
                        schedule=[5, 10, 15], gamma=0.5, train_batch=256, memory=2000, beta=0.5),
    # the offline BatchNorm demo: SVHN's training on the digits at 32 px, shortened (test_digits_cnn)
    "train_digits_cnn": dict(dataset="digits32", num_class=10, class_per_task=2, num_task=5,
                             memory=400, optimizer="radam", lr=0.01, epochs=8, schedule=[4, 6],
                             gamma=0.2, train_batch=64, beta=1.0, r=1, adapt_lr=1e-3,
                             adapt_epochs=1, adapt_batch=64, channels_last=True, num_workers=0),
}
# The release's settings by session, hard-coded in its scripts and learner: MNIST trains session 0
# for 5 epochs and session 4 at lr 0.05; SVHN's newest task takes 4 inner steps in session 4.
SESSIONS = {"train_mnist": {0: {"epochs": 5}, 4: {"lr": 0.05}}, "train_svhn": {4: {"r_newest": 4}}}
# The crop each script's pipeline gives (image_size None: the pipeline decides).
SIDE = {"train_cifar": 32, "train_svhn": 32, "train_imagenet": 112, "train_celeb": 112,
        "train_cub": 224, "train_mnist": 28, "train_digits_cnn": 32}
# What produced the paper's numbers ships by default.
RELEASE = dict(variant="official", task_start="previous", meta_target="last",
               task_optimizer="shared", batch_forward=True, augmentation="release",
               selection="first", r_newest=None)

SHRUNK = dict(epochs=1, schedule=[], train_batch=16, test_batch=32, num_workers=0, adapt_batch=8,
              continuum=4, device="cpu", sessions={})


def write_cifar(root, monkeypatch):
    F.point_torchvision_at_cifar100(monkeypatch, F.write_cifar100(root))
    return dict(num_class=20, class_per_task=10, num_task=2, memory=20)


def write_svhn(root, monkeypatch):
    F.point_torchvision_at_svhn(monkeypatch, F.write_svhn(root)[0])
    return dict(num_class=4, num_task=2, memory=8)


def write_imagenet(root, monkeypatch):
    F.write_class_folders(root, ("train", "val"), [f"n0{i}" for i in range(6)],
                          {"train": 3, "val": 2})
    return dict(num_class=4, class_per_task=2, num_task=2, memory=8, image_size=32)


def write_celeb(root, monkeypatch):
    F.write_class_folders(root, ("train", "test"), [f"m.{i:04d}" for i in range(4)],
                          {"train": 3, "test": 2}, ext=".jpg")
    return dict(num_class=4, class_per_task=2, num_task=2, memory=8, image_size=32)


def write_cub(root, monkeypatch):
    F.write_cub(root, num_class=4)
    return dict(num_class=4, class_per_task=2, num_task=2, memory=8, image_size=32)


WRITERS = {"train_cifar": (write_cifar, ReducedResNet18), "train_svhn": (write_svhn, ReducedResNet18),
           "train_imagenet": (write_imagenet, ResNet18), "train_celeb": (write_celeb, CelebResNet18),
           "train_cub": (write_cub, ResNet18)}


def check_accuracies(saved, t, cfg):
    """What holds of session t's accuracies whatever the network learnt (utils/inference.py:
    evaluate): each counts correct samples among the same test samples, tasks hold equally many,
    and a routed protocol is right only where its route is the true task and the true task's
    model picks the label, which is what the task-aware protocol scores."""
    n = saved["num_test_samples"]
    for name in ("task_agnostic", "per_sample", "task_aware", "base"):
        acc, per_task = saved[f"acc_{name}"], saved["per_task"][name]
        assert acc * n / 100 == pytest.approx(round(acc * n / 100), abs=1e-9), name
        assert len(per_task) == t + 1 and acc == pytest.approx(sum(per_task) / (t + 1)), name
    aware = saved["acc_task_aware"]
    assert saved["acc_task_agnostic"] <= min(aware, saved["task_prediction_acc"])
    assert saved["acc_per_sample"] <= min(aware, saved["task_prediction_acc_per_sample"])
    by_size = saved["acc_task_agnostic_by_continuum"]
    assert (by_size[str(cfg.continuum)], by_size["1"]) == (saved["acc_task_agnostic"],
                                                           saved["acc_per_sample"])
    if t == 0:  # one task: every route is right, and its model is the base's argmax in its slice
        assert saved["acc_task_agnostic"] == saved["acc_per_sample"] == aware == saved["acc_base"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_args(name):
    cfg = check_args(importlib.import_module(name).args)
    for field, value in dict(SHIPPED[name], **RELEASE).items():
        assert getattr(cfg, field) == value, field
    assert dataset_spec(cfg.dataset).image_size(cfg) == SIDE[name]
    assert cfg.sessions == SESSIONS.get(name, {})
    assert cfg.model_selection == "last"  # no test data reaches a training decision by default


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_two_tasks_end_to_end_on_fake_data(name, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    writer, network = WRITERS[name]
    data_path = str(tmp_path / "data")
    over = dict(SHRUNK, data_path=data_path, checkpoint=str(tmp_path / "results"),
                savepoint=str(tmp_path / "models"), **writer(data_path, monkeypatch))
    args = type("args", (module.args,), over)
    records = run(args, 0, f"{name}.py")
    assert [r["session"] for r in records] == [0, 1]
    cfg = check_args(args)
    for t in (0, 1):
        saved = json.load(open(os.path.join(cfg.checkpoint, f"session_{t}.json")))
        assert saved["seen_classes"] == (t + 1) * cfg.class_per_task
        assert saved["num_test_samples"] == (t + 1) * cfg.class_per_task * 2  # 2 test images a class
        check_accuracies(saved, t, cfg)
    side = cfg.image_size or 32
    model = build_network(cfg.dataset, (3, side, side), cfg.num_class)
    assert isinstance(model, network)
    state = torch.load(os.path.join(cfg.savepoint, "session_1_model.pt"), weights_only=True)
    model.load_state_dict(state)  # the saved weights are the data set's network
    order = json.load(open(os.path.join(cfg.checkpoint, "class_order.json")))
    listed = open(os.path.join(cfg.checkpoint, "classes.txt")).read().split()
    assert listed == order["class_names"] and len(listed) == cfg.num_class

@pytest.mark.parametrize("method", ["er", "finetune", "joint"])
def test_train_cifar_takes_every_method_on_its_command_line(method, tmp_path, monkeypatch):
    """``python3 train_cifar.py 0 method=...`` on fake CIFAR-100: two sessions of that method,
    recorded as such, its memory as the method keeps it, evaluated by every protocol."""
    import train_cifar
    from utils.run.session import main
    data_path = str(tmp_path / "data")
    shape = write_cifar(data_path, monkeypatch)
    words = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
             for k, v in dict(SHRUNK, **shape, data_path=data_path,
                              checkpoint=str(tmp_path / "results"),
                              savepoint=str(tmp_path / "models")).items()]
    main(train_cifar.args, ["train_cifar.py", "0", f"method={method}"] + [w.replace("'", "")
                                                                          for w in words])
    for t in (0, 1):
        saved = json.load(open(tmp_path / "results" / f"session_{t}.json"))
        assert saved["method"] == method and saved["args"]["method"] == method
        assert saved["memory_exemplars"] == (0 if method == "finetune" else 20)
        assert set(saved["per_task"]) == {"task_agnostic", "per_sample", "task_aware", "base"}
        assert "eta" not in saved and saved["er_loss"] == "ce"
