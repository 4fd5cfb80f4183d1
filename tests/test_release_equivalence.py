"""Our shipped ``official`` training step against the authors' own code (github brjathu/iTAML).

Set ``ITAML_RELEASE`` to a checkout of the release to run these; without it they are skipped. For
each case, ``tests/support/release_runner.py`` (a process of its own, since the release's module
names clash with ours) builds the release's network, runs one epoch of its ``Learner.train`` over a
few float64 mini-batches and keeps the weights before and after. Here our network loads the
release's initial weights (``resnet.load_release_state_dict``) and our ``MetaLearner``, configured
by the shipped ``train_<dataset>.py`` with its per-session settings, takes the same mini-batches.
The learning rate, β and optimizer the release used are written out below from its scripts, not
taken from ours.

The release's RAdam casts gradients and weights to float32 inside its step (a no-op in the float32
training that made the paper's numbers); the runner makes those casts identities for the exact
comparison, and the run with them is reported too (``test_..._with_the_releases_float32_casts``).
"""
import os
import subprocess
import sys

import pytest
import torch

from data_sources import build_network
from learner_task_itaml import MetaLearner
from resnet import load_release_state_dict
from utils.run.epochs import lr_at
from utils.config import check_args, for_session

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "release_runner.py")
RELEASE = os.environ.get("ITAML_RELEASE")
pytestmark = pytest.mark.skipif(
    not RELEASE, reason="set ITAML_RELEASE to a checkout of github.com/brjathu/iTAML to compare our "
                        "training step with the authors' (docs/release.md: Running the equivalence test)")

# What the release's scripts and learner set, read off them: optimizer, learning rate of the
# session, β, and the network's input; the release's r is 1, except 4 for the newest task of SVHN's
# session 4 (its learner decides that by itself).
RELEASE_SETTINGS = {
    "mnist": dict(script="train_mnist", optimizer="sgd", lr=0.1, beta=0.5, shape=(1, 28, 28)),
    "svhn": dict(script="train_svhn", optimizer="radam", lr=0.01, beta=1.0, shape=(3, 32, 32)),
    "cifar100": dict(script="train_cifar", optimizer="radam", lr=0.01, beta=1.0, shape=(3, 32, 32)),
    # the release's MS-Celeb network at 64 px (it is the same network at any size; 112 px is slower)
    "celeb": dict(script="train_celeb", optimizer="radam", lr=0.01, beta=1.0, shape=(3, 64, 64)),
}
RELEASE_LR_BY_SESSION = {("mnist", 4): 0.05}  # train_mnist.py: `if ses == 4: args.lr = 0.05`

# name: (data set, session, mini-batches, classes drawn per task and batch, samples per class)
CASES = {
    "mnist_session_2": ("mnist", 2, 3, 2, 3),
    "mnist_session_4": ("mnist", 4, 2, 2, 2),
    "svhn_session_2": ("svhn", 2, 2, 2, 2),
    "svhn_session_4": ("svhn", 4, 2, 2, 2),
    "cifar100_session_2": ("cifar100", 2, 2, 4, 1),
    "celeb_session_1": ("celeb", 1, 2, 2, 2),
}
TOLERANCE = 1e-10


def shipped_cfg(dataset):
    module = __import__(RELEASE_SETTINGS[dataset]["script"])
    fields = {k: getattr(module.args, k) for k in dir(module.args) if not k.startswith("_")}
    return check_args(type("args", (), {**fields, "device": "cpu"}))


def make_case(name):
    dataset, session, num_batches, classes_per_task, per_class = CASES[name]
    cfg, release = shipped_cfg(dataset), RELEASE_SETTINGS[dataset]
    cpt, g = cfg.class_per_task, torch.Generator().manual_seed(len(name))
    batches = []
    for _ in range(num_batches):
        labels = torch.cat([k * cpt + torch.randperm(cpt, generator=g)[:classes_per_task]
                            for k in range(session + 1)]).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]
        batches.append((torch.randn(len(labels), *release["shape"], generator=g,
                                    dtype=torch.float64), labels))
    return {"dataset": dataset, "session": session, "num_class": cfg.num_class,
            "class_per_task": cpt, "num_task": cfg.num_task, "seed": 7,
            "optimizer": release["optimizer"], "beta": release["beta"],
            "lr": RELEASE_LR_BY_SESSION.get((dataset, session), release["lr"]),
            "batches": batches, "probe": torch.randn(4, *release["shape"], generator=g,
                                                     dtype=torch.float64)}


@pytest.fixture(scope="module")
def release_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("release")
    cases = {name: make_case(name) for name in CASES}
    torch.save(cases, folder / "cases.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, RUNNER, RELEASE, str(folder / "cases.pt"),
                           str(folder / "out.pt")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return cases, torch.load(folder / "out.pt", weights_only=False)


def ours_from(release_state, case):
    cfg = shipped_cfg(case["dataset"])
    model = build_network(case["dataset"], case["batches"][0][0].shape[1:], cfg.num_class)
    return load_release_state_dict(model.double(), release_state), cfg


def distance(ours, theirs, initial):
    """‖ours − theirs‖ over every floating tensor, relative to ‖theirs‖ and to the size of the
    release's update ‖theirs − initial‖."""
    pairs = [(a, b, c) for a, b, c in zip(ours.values(), theirs.values(), initial.values())
             if b.is_floating_point()]
    diff = sum(((a - b) ** 2).sum() for a, b, _ in pairs).sqrt()
    norm = sum((b ** 2).sum() for _, b, _ in pairs).sqrt()
    update = sum(((b - c) ** 2).sum() for _, b, c in pairs).sqrt()
    return (diff / norm).item(), (diff / update).item()


def our_step(case, release_state):
    """Our model after the case's mini-batches, from the release's initial weights."""
    model, cfg = ours_from(release_state, case)
    scfg = for_session(cfg, case["session"])
    learner = MetaLearner(model, scfg, case["session"], "cpu")
    learner.set_lr(lr_at(scfg, 0))
    model.train()
    for x, y in case["batches"]:
        learner.meta_step(x, y)
    learner.finish()
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_official_step_is_the_releases(name, release_results):
    cases, results = release_results
    case, theirs = cases[name], results[(name, True)]
    model = our_step(case, theirs["initial"])
    ours = model.state_dict()
    relative, of_update = distance(ours, theirs["final"], theirs["initial"])
    print(f"{name}: relative distance {relative:.2e} (of the update: {of_update:.2e})")
    assert relative <= TOLERANCE and of_update <= 1e-8
    for (key, a), b in zip(ours.items(), theirs["final"].values()):
        if not b.is_floating_point():
            assert torch.equal(a, b), key  # BatchNorm's step counters
    model.eval()
    with torch.no_grad():
        out = model(case["probe"])
    assert torch.allclose(out, theirs["probe_eval_final"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_releases_weights_give_the_releases_logits_in_our_network(name, release_results):
    cases, results = release_results
    case, theirs = cases[name], results[(name, True)]
    model, _ = ours_from(theirs["initial"], case)
    with torch.no_grad():
        assert torch.equal(model.eval()(case["probe"]), theirs["probe_eval_initial"]) or \
            torch.allclose(model(case["probe"]), theirs["probe_eval_initial"], rtol=1e-12, atol=0)
        train = model.train()(case["probe"])
    assert torch.allclose(train, theirs["probe_train_initial"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(CASES))
def test_distance_with_the_releases_float32_casts(name, release_results):
    """The release's RAdam run as it is: every weight rounded to float32 at each step, so the
    distance is float32's rounding (SGD, MNIST's optimizer, has no casts)."""
    cases, results = release_results
    case, theirs = cases[name], results[(name, False)]
    relative, of_update = distance(our_step(case, theirs["initial"]).state_dict(), theirs["final"],
                                   theirs["initial"])
    print(f"{name} with the casts: relative distance {relative:.2e} (of the update: "
          f"{of_update:.2e})")
    if case["optimizer"] == "sgd":
        assert relative <= TOLERANCE
    else:  # the casts, and nothing else, separate the two: float32's rounding, grown by training
        assert 1e-9 < relative < 1e-2
