"""A timed end-to-end run of ``train_cifar.py`` on CIFAR-100-format fake data, and the wall time of the
full 10 × 70-epoch CIFAR-100 run estimated from it.

    python3 benchmarks/e2e_cifar.py --data DIR --runs DIR --json OUT.json [--gpu-data] [overrides]

Writes a fake CIFAR-100 of the real size (500 training and 100 test images a class, random pixels)
in torchvision's on-disk format into ``--data`` unless it is there, points torchvision's checksums at
it, and runs the script as shipped on two tasks of ten classes for two epochs each, through the real
loaders (``--gpu-data``: the data set held on the GPU), with ``args`` overrides after the options.
The estimate: every session of the full run trains 70 epochs on 5,000 new images and 2,000
exemplars, as session 1 here does (session 0 on its 5,000 alone), and evaluating session t costs
session 1's evaluation times (t + 1)/2, since it covers t + 1 tasks' test images and adaptations.
"""
import argparse
import contextlib
import json
import os
import sys
import time
from types import SimpleNamespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_cifar  # noqa: E402
from tests.support import fake_data  # noqa: E402  (the real formats' writers)
from utils.run import overrides  # noqa: E402
from utils.run.session import run  # noqa: E402

FULL_SESSIONS, FULL_EPOCHS = 10, 70


def fake_cifar(folder, train_per_class=500, test_per_class=100):
    """The fake data set, written once; returns its files' MD5 sums."""
    sums_file = os.path.join(folder, "md5.json")
    if not os.path.exists(sums_file):
        sums = fake_data.write_cifar100(folder, train_per_class, test_per_class)
        with open(sums_file, "w") as f:
            json.dump(sums, f)
    with open(sums_file) as f:
        return json.load(f)


@contextlib.contextmanager
def fake_checksums(sums):
    """torchvision's CIFAR-100 checksums pointed at the fake files for the run, then put back."""
    from torchvision.datasets import CIFAR100
    saved = {name: getattr(CIFAR100, name) for name in ("train_list", "test_list", "meta")}
    fake_data.point_torchvision_at_cifar100(SimpleNamespace(setattr=setattr), sums)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(CIFAR100, name, value)


def estimate_minutes(records, epochs):
    """The full run's wall time from sessions 0 and 1 of this one (module docstring)."""
    first, second = records[0], records[1]
    epoch_first = first["train_seconds"] / epochs
    epoch_later = second["train_seconds"] / epochs
    train = FULL_EPOCHS * (epoch_first + (FULL_SESSIONS - 1) * epoch_later)
    evaluate = first["eval_seconds"] + sum(second["eval_seconds"] * (t + 1) / 2
                                           for t in range(1, FULL_SESSIONS))
    return (train + evaluate) / 60


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder for the fake CIFAR-100")
    parser.add_argument("--runs", required=True, help="folder for the run's results and models")
    parser.add_argument("--json", required=True, help="file to write the timings to")
    parser.add_argument("--gpu-data", action="store_true", help="args.gpu_data = True")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", default="500,100",
                        help="training and test images a class of the fake data (default: 500,100)")
    options, words = parser.parse_known_args(argv)
    sums = fake_cifar(options.data, *map(int, options.per_class.split(",")))
    name = "gpu_data" if options.gpu_data else "loader"
    texts = [f"data_path={options.data}", "num_class=20", "class_per_task=10", "num_task=2",
             f"epochs={options.epochs}", "schedule=[]", f"gpu_data={options.gpu_data}",
             f"checkpoint={os.path.join(options.runs, name, 'results')}",
             f"savepoint={os.path.join(options.runs, name, 'models')}"] + words
    began = time.time()
    with fake_checksums(sums):
        records = run(overrides.apply(train_cifar.args, texts)[0], 0, "train_cifar.py", texts)
    wall = time.time() - began
    result = {"config": name, "overrides": texts, "wall_seconds": wall,
              "device": records[-1]["device"],
              "sessions": [{k: r[k] for k in ("session", "train_seconds", "eval_seconds",
                                              "seconds", "acc_task_agnostic", "final_train_loss")}
                           for r in records],
              "estimated_full_cifar100_run_minutes": estimate_minutes(records, options.epochs)}
    results = {}
    if os.path.exists(options.json):
        with open(options.json) as f:
            results = json.load(f)
    results[name] = result
    with open(options.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"{name}: {wall:.1f} s for 2 sessions × {options.epochs} epochs; estimated full "
          f"CIFAR-100 run {result['estimated_full_cifar100_run_minutes']:.1f} min")


if __name__ == "__main__":
    main()
