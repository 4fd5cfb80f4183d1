"""Where a run's files live, how they are written (atomically) and read back (safely).

Results go to ``args.checkpoint`` (session JSONs, summary.csv, class order, log) and weights to
``args.savepoint`` (model and replay memory of every session), as in the release. A session counts as
finished only once its ``session_<t>.json`` is in place, and it is written last; a finished session's
files are never written again.
"""
import json
import os
import tempfile

import torch

from utils.errors import ConfigError


def atomic_write(path, write):
    """Write through ``write(file_object)`` to a temporary name, then move it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should read like any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


class RunStore:
    """The files of one run, named by session."""

    def __init__(self, cfg, script="train.py"):
        self.cfg, self.script = cfg, script

    def session_json(self, t):
        return os.path.join(self.cfg.checkpoint, f"session_{t}.json")

    def model_file(self, t):
        return os.path.join(self.cfg.savepoint, f"session_{t}_model.pt")

    def memory_file(self, t):
        return os.path.join(self.cfg.savepoint, f"session_{t}_memory.json")

    @property
    def class_order_file(self):
        return os.path.join(self.cfg.checkpoint, "class_order.json")

    @property
    def class_list_file(self):
        """The run's classes by name, one per line in arrival order: reusable as args.class_order."""
        return os.path.join(self.cfg.checkpoint, "classes.txt")

    @property
    def summary_file(self):
        return os.path.join(self.cfg.checkpoint, "summary.csv")

    def finished(self):
        """Sessions whose record is in place, in order."""
        return [t for t in range(self.cfg.num_task) if os.path.exists(self.session_json(t))]

    def check_start(self, start):
        """Refuse a start that would overwrite a finished session or skip an unfinished one."""
        done = self.finished()
        clash = [t for t in done if t >= start]
        if clash:
            nxt = max(done) + 1
            hint = ("the run is complete" if nxt >= self.cfg.num_task
                    else f"resume with `python3 {self.script} {nxt}`")
            raise ConfigError(f"{self.session_json(clash[0])} already holds finished session "
                              f"{clash[0]}, which is never overwritten; {hint}, or set a new "
                              "args.checkpoint and args.savepoint to start again.")
        gaps = [t for t in range(start) if t not in done]  # resuming needs every earlier record
        if gaps:
            raise ConfigError(f"cannot resume at task {start}: {self.session_json(gaps[-1])} is "
                              f"missing, so session {gaps[-1]} never finished; run "
                              f"`python3 {self.script} {max(done) + 1 if done else 0}` first.")

    def redo_hint(self, t):
        """What to do when a file of finished session t is unusable."""
        return (f"move {self.session_json(t)} away and run `python3 {self.script} {t}` to redo "
                f"session {t}")

    def read_json(self, path, hint):
        """A JSON file of the run; if it is missing or corrupt, the error ends with ``hint``."""
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            problem = "is missing"
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            problem = f"is corrupt ({e})"
        raise ConfigError(f"{path} {problem}; {hint}.")

    def load_model_state(self, t):
        path = self.model_file(t)
        if not os.path.exists(path):
            raise ConfigError(f"{path} is missing; {self.redo_hint(t)}.")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise ConfigError(f"{path} is corrupt ({type(e).__name__}); {self.redo_hint(t)}.")

    def save_model(self, t, model):
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(self.model_file(t), lambda f: torch.save(state, f))
