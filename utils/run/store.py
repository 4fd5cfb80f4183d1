"""One run's files, session by session: where each lives (``utils/files.py`` names them), the checks
a resume makes before anything is written, and reading them back safely.

A session counts as finished only once its record ``session_<t>.json`` is in place, and it is written
last; a finished session's files are never written again. Nothing here unpickles: models load with
``weights_only=True`` and everything else is JSON, so a downloaded checkpoint cannot run code.
"""
import contextlib
import json
import os
import tempfile

import torch

from utils import files
from utils.errors import ConfigError
from utils.report.records import check_record
from utils.run.overrides import command, fields

try:
    import fcntl
except ImportError:  # Windows has no fcntl: runs there go without the lock
    fcntl = None


class RunStore:
    """The files of one run, named by session."""

    def __init__(self, cfg, script="train.py", overrides=()):
        self.cfg, self.script, self.overrides = cfg, script, list(overrides)

    def command(self, start):
        """The command that runs this run from task ``start``, its overrides included."""
        return command(self.script, start, self.overrides)

    def overridden(self):
        """The fields the command line set, savepoint included when it followed the checkpoint."""
        return fields(text.split("=", 1)[0] for text in self.overrides)

    def session_json(self, t):
        return files.session_record(self.cfg.checkpoint, t)

    def model_file(self, t):
        return files.model_file(self.cfg.savepoint, t)

    def memory_file(self, t):
        return files.memory_file(self.cfg.savepoint, t)

    @property
    def class_order_file(self):
        return os.path.join(self.cfg.checkpoint, files.CLASS_ORDER)

    @property
    def class_list_file(self):
        return os.path.join(self.cfg.checkpoint, files.CLASS_LIST)

    @property
    def summary_file(self):
        return os.path.join(self.cfg.checkpoint, files.SUMMARY)

    @property
    def manifest_file(self):
        return os.path.join(self.cfg.checkpoint, files.MANIFEST)

    @property
    def lock_file(self):
        return os.path.join(self.cfg.checkpoint, files.LOCK)

    def finished(self):
        """Sessions whose record is in place, in order."""
        return [t for t in files.finished_sessions(self.cfg.checkpoint) if t < self.cfg.num_task]

    def check_start(self, start):
        """Refuse a start that would overwrite a finished session or skip an unfinished one."""
        done = self.finished()
        clash = [t for t in done if t >= start]
        if clash:
            nxt = max(done) + 1
            hint = ("the run is complete" if nxt >= self.cfg.num_task
                    else f"resume with `{self.command(nxt)}`")
            raise ConfigError(f"{self.session_json(clash[0])} already holds finished session "
                              f"{clash[0]}, which is never overwritten; {hint}, or set a new "
                              "args.checkpoint and args.savepoint to start again.")
        gaps = [t for t in range(start) if t not in done]  # resuming needs every earlier record
        if gaps:
            raise ConfigError(f"cannot resume at task {start}: {self.session_json(gaps[-1])} is "
                              f"missing, so session {gaps[-1]} never finished; run "
                              f"`{self.command(max(done) + 1 if done else 0)}` first.")

    def redo_hint(self, t):
        """What to do when a file of finished session t is unusable."""
        return (f"move {self.session_json(t)} away and run `{self.command(t)}` to redo "
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

    def read_record(self, t):
        """Session t's record, checked enough that the summary and the report can use it."""
        path = self.session_json(t)
        record = self.read_json(path, self.redo_hint(t))
        try:
            check_record(record, t)
        except ValueError as e:
            raise ConfigError(f"{path} is corrupt (it is not the record of session {t}: {e}); "
                              f"{self.redo_hint(t)}.") from None
        return record

    def load_model_state(self, t):
        """A state_dict of tensors; ``weights_only`` refuses any pickled object that could run code."""
        path = self.model_file(t)
        if not os.path.exists(path):
            raise ConfigError(f"{path} is missing; {self.redo_hint(t)}.")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated or foreign files
            raise ConfigError(f"{path} is corrupt or not a plain tensor checkpoint "
                              f"({type(e).__name__}); {self.redo_hint(t)}.") from None

    def check_checksum(self, path, record, t):
        """Catch a file that still parses but changed after session t finished (a bad copy, a
        flipped bit, a file of another run): its record holds the checksum it was written with."""
        expected = (record.get("checksums") or {}).get(os.path.basename(path))
        if expected is not None and files.sha256(path) != expected:
            raise ConfigError(f"{path} is corrupt: its checksum differs from the one in "
                              f"{self.session_json(t)}; restore the file, or {self.redo_hint(t)}.")

    def save_model(self, t, model):
        """Returns the file's checksum, for the session's record."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        files.atomic_write(self.model_file(t), lambda f: torch.save(state, f))
        return files.sha256(self.model_file(t))

    def save_memory(self, t, memory_state):
        files.write_json(self.memory_file(t), memory_state)
        return files.sha256(self.memory_file(t))

    def remove_temporaries(self):
        """Delete what a killed run left half-written (``.session_1_model.pt.k3x9a_2q``); nothing
        reads those files, but a model's is tens of megabytes and every kill can add one. Returns
        the names removed."""
        removed = []
        for folder in sorted({self.cfg.checkpoint, self.cfg.savepoint}):
            names = os.listdir(folder) if os.path.isdir(folder) else []
            for name in sorted(filter(files.TEMPORARY.match, names)):
                os.remove(os.path.join(folder, name))
                removed.append(name)
        return removed

    def check_writable(self):
        """Create args.checkpoint and args.savepoint, and a nameless file in each, before any
        training: a folder that cannot be written then stops the run at once, not at session 0's
        first save. The probe files have random names and vanish on close, so no file of a finished
        session is touched."""
        for field in ("checkpoint", "savepoint"):
            try:
                files.make_folder(getattr(self.cfg, field))
                tempfile.TemporaryFile(dir=getattr(self.cfg, field)).close()
            except OSError as e:
                raise self._unwritable(field, e) from None

    def _unwritable(self, field, error):
        folder = getattr(self.cfg, field)
        return ConfigError(f"args.{field} = {folder!r} cannot be written ({files.why(error, folder)}); "
                           "choose a folder you can write to.")

    @contextlib.contextmanager
    def lock(self):
        """Hold ``<checkpoint>/.lock`` for the run, so a second run on the same folders stops at once
        instead of deleting the first one's temporary files. The kernel drops it when a process dies,
        so a killed run never leaves a stale lock. Both folders are checked writable first."""
        self.check_writable()
        try:
            f = open(self.lock_file, "a")
        except OSError as e:  # e.g. a folder named .lock
            raise self._unwritable("checkpoint", e) from None
        with f:
            if fcntl is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ConfigError(f"another run is using {self.cfg.checkpoint} (it holds "
                                      f"{self.lock_file}); wait until it ends, or give this run "
                                      "its own args.checkpoint and args.savepoint.") from None
                except OSError:  # a file system without locks (some network mounts): go unguarded
                    pass
            yield
