"""A run's files: their names, and how every file of the project is written (atomically, durably).

Results go to ``args.checkpoint`` (session records, summary, class order, manifest, report, log) and
weights to ``args.savepoint`` (model and replay memory of every session), as in the release. The
names below are the only place a run's file names are spelt; the run store, the report and the sweep
ask here.
"""
import errno
import hashlib
import json
import os
import re
import tempfile

from utils.errors import ConfigError

# In args.checkpoint
SESSION_RECORD = re.compile(r"^session_(\d+)\.json$")  # session t's record: t is finished once it exists
CLASS_ORDER = "class_order.json"
CLASS_LIST = "classes.txt"        # the run's classes by name, in arrival order (usable as class_order)
SUMMARY = "summary.csv"
MANIFEST = "manifest.json"
LOG = "log.txt"
LOCK = ".lock"
# The report (utils/report/tables.py), rewritten after every session
REPORT_CSV, REPORT_MD = "report.csv", "report.md"
ACCURACY_PLOT, CONTINUUM_PLOT, LOSS_PLOT = "accuracy.png", "continuum.png", "loss.png"
REPORT = (REPORT_CSV, REPORT_MD, ACCURACY_PLOT, CONTINUUM_PLOT, LOSS_PLOT)


def session_record(checkpoint, t):
    return os.path.join(checkpoint, f"session_{t}.json")


def model_file(savepoint, t):
    """In args.savepoint: session t's weights."""
    return os.path.join(savepoint, f"session_{t}_model.pt")


def memory_file(savepoint, t):
    """In args.savepoint: session t's replay memory."""
    return os.path.join(savepoint, f"session_{t}_memory.json")


def finished_sessions(checkpoint):
    """The sessions whose record is in ``checkpoint``, in order."""
    names = os.listdir(checkpoint) if os.path.isdir(checkpoint) else []
    return sorted(int(m.group(1)) for m in map(SESSION_RECORD.match, names) if m)


# What atomic_write leaves when a run is killed between writing a temporary file and moving it into
# place: "." + the file's name + "." + mkstemp's 8 random characters.
_WRITTEN = [r"session_\d+(\.json|_model\.pt|_memory\.json)"] + [
    re.escape(name) for name in (SUMMARY, CLASS_ORDER, CLASS_LIST, MANIFEST) + REPORT]
TEMPORARY = re.compile(r"^\.(" + "|".join(_WRITTEN) + r")\.[a-z0-9_]{8}$")


def atomic_write(path, write):
    """Write through ``write(file_object)`` to a temporary name in the same folder, then move it into
    place: readers see the old file or the whole new one, never a part, even after a kill. A write
    that fails (a full disk, a folder gone read-only) stops with one sentence naming the file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _write_then_move(path, folder, write)
    except OSError as e:
        raise ConfigError(f"{path} could not be written ({why(e, folder)}); make room on its disk "
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


def why(error, folder):
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
