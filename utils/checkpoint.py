"""Where a run's files live, how they are written (atomically, durably) and read back (safely).

Results go to ``args.checkpoint`` (session JSONs, summary.csv, class order, manifest, log) and
weights to ``args.savepoint`` (model and replay memory of every session), as in the release. A
session counts as finished only once its ``session_<t>.json`` is in place, and it is written last; a
finished session's files are never written again. Nothing here unpickles: models load with
``weights_only=True`` and everything else is JSON, so a downloaded checkpoint cannot run code.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile

import torch

from utils.errors import ConfigError
from utils.overrides import command, fields

try:
    import fcntl
except ImportError:  # Windows has no fcntl: runs there go without the lock
    fcntl = None

# What atomic_write leaves when a run is killed between writing a temporary file and moving it into
# place: "." + the file's name + "." + mkstemp's 8 random characters.
TEMPORARY = re.compile(r"^\.(session_\d+(\.json|_model\.pt|_memory\.json)|summary\.csv|"
                       r"class_order\.json|classes\.txt|manifest\.json|report\.csv|report\.md|"
                       r"accuracy\.png)\.[a-z0-9_]{8}$")


def atomic_write(path, write):
    """Write through ``write(file_object)`` to a temporary name in the same folder, then move it into
    place: readers see the old file or the whole new one, never a part, even after a kill. A write
    that fails (a full disk, a folder gone read-only) stops with one sentence naming the file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _write_then_move(path, folder, write)
    except OSError as e:
        raise ConfigError(f"{path} could not be written ({_why(e, folder)}); make room on its disk "
                          "or fix its folder, then run the command again: finished sessions are "
                          "kept.") from None


def _write_then_move(path, folder, write):
    make_folder(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should read like any file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data reach the disk before the name does
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_folder(folder)  # the rename itself survives a power cut


def _why(error, folder):
    """An OSError in words; where a regular file stands in the place of ``folder`` or of a folder
    above it, that file is named instead, since the system's words ("File exists", "Not a
    directory") hide it."""
    above = os.path.abspath(folder)
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if os.path.isfile(above):
        return f"{above} is a file, not a folder"
    words = error.strerror or str(error)
    return f"{words}: {error.filename}" if error.filename else words


def make_folder(folder):
    """``os.makedirs``, with every new folder's name synced into its parent."""
    missing, folder = [], os.path.abspath(folder)  # a relative path's dirname ends in "", not "/"
    while not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for new in reversed(missing):
        os.makedirs(new, exist_ok=True)
        fsync_folder(os.path.dirname(new))


def fsync_folder(folder):
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (certain network mounts) refuse fsync on a folder; they commit names
        # on their own.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    @property
    def manifest_file(self):
        return os.path.join(self.cfg.checkpoint, "manifest.json")

    @property
    def lock_file(self):
        return os.path.join(self.cfg.checkpoint, ".lock")

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
        if (not isinstance(record, dict) or record.get("session") != t
                or not isinstance(record.get("args"), dict)
                or not isinstance(record.get("per_task"), dict)):
            raise ConfigError(f"{path} is corrupt (it is not the record of session {t}); "
                              f"{self.redo_hint(t)}.")
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
        if expected is not None and sha256(path) != expected:
            raise ConfigError(f"{path} is corrupt: its checksum differs from the one in "
                              f"{self.session_json(t)}; restore the file, or {self.redo_hint(t)}.")

    def save_model(self, t, model):
        """Returns the file's checksum, for the session's record."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(self.model_file(t), lambda f: torch.save(state, f))
        return sha256(self.model_file(t))

    def save_memory(self, t, memory_state):
        write_json(self.memory_file(t), memory_state)
        return sha256(self.memory_file(t))

    def remove_temporaries(self):
        """Delete what a killed run left half-written (``.session_1_model.pt.k3x9a_2q``); nothing
        reads those files, but a model's is tens of megabytes and every kill can add one. Returns
        the names removed."""
        removed = []
        for folder in sorted({self.cfg.checkpoint, self.cfg.savepoint}):
            names = os.listdir(folder) if os.path.isdir(folder) else []
            for name in sorted(filter(TEMPORARY.match, names)):
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
                make_folder(getattr(self.cfg, field))
                tempfile.TemporaryFile(dir=getattr(self.cfg, field)).close()
            except OSError as e:
                raise self._unwritable(field, e) from None

    def _unwritable(self, field, error):
        folder = getattr(self.cfg, field)
        return ConfigError(f"args.{field} = {folder!r} cannot be written ({_why(error, folder)}); "
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
