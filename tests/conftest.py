import os
import sys
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_cfg(**over):
    """A checked config for unit tests (a digits-sized run unless overridden)."""
    from utils.config import check_args
    import train_digits
    fields = {k: getattr(train_digits.args, k) for k in dir(train_digits.args) if not k.startswith("_")}
    fields.update(over)
    return check_args(SimpleNamespace(**fields))


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture
def small_args(tmp_path):
    """The demo's args class shrunk for a fast run: 3 tasks of 2 digits, 2 epochs, results in tmp."""
    import train_digits

    class args(train_digits.args):
        checkpoint = str(tmp_path / "results")
        savepoint = str(tmp_path / "models")
        num_class = 6
        num_task = 3
        epochs = 2
        schedule = [1]
        memory = 30
    return args
