import os
import sys

import pytest

# tests/ is a package, so pytest puts the repository root first on sys.path itself (its default
# "prepend" import mode) and imports the test files as tests.test_<module>; this line keeps the
# root there under the other import modes too. tests/ itself is never on sys.path: the shared
# fixtures are imported as tests.support.<module>.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support.cfg import make_cfg  # noqa: E402


def _keep_freed_memory():
    """glibc, in this process only: every allocation from the heap, and freed memory kept rather
    than handed back. On virtual machines where the kernel's first touch of a page is slow (the
    2-core Firecracker VMs this suite runs on: 88 MB zeroed in 0.35 s fresh, 3 ms reused), a float64
    ResNet-18's steps otherwise spend most of their time faulting in the 90 MB blocks each one frees
    and allocates again. Nothing computed changes; the runs the tests start as processes are left
    with glibc's defaults, as a user's are."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 30)


_keep_freed_memory()


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
