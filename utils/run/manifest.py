"""``manifest.json``: what a run began with (args, seed, package versions, git commit, device) and every
resume since, and the check that a resume continues the same experiment.

A resumed run builds on the files of sessions 0..N−1, so the args that decide what those files mean
(the fields of kind "experiment", ``utils/fields.py``, each with what it would change) must not
change. Any other field may change (epochs, workers, device, …); the change is logged and recorded in
the manifest, and each session's record keeps the args it ran with.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess

import torch

from data_sources import dataset_spec
from utils.config import session_settings
from utils.fields import CLASS_ORDERS, FIELDS, SWITCHES, UNKNOWN, VARIANTS
from utils.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "Pillow",
            "matplotlib", "tqdm")

def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions():
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_state(root=ROOT):
    """The commit of the code that runs, and whether tracked files differ from it; None for both
    where the code is not a git checkout or git is not installed."""
    def git(*argv):
        return subprocess.run(["git", "-C", root, *argv], capture_output=True, text=True,
                              timeout=10, check=True, stdin=subprocess.DEVNULL).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_info(device):
    info = {"name": str(device), "cpu": platform.processor() or platform.machine(),
            "platform": platform.platform(), "threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def environment(device):
    return {"versions": versions(), "git": git_state(), "device": device_info(device)}


def plain(cfg):
    """The args as they read back from JSON (tuples become lists), so old and new compare equal."""
    return json.loads(json.dumps(vars(cfg)))


def recorded_value(old_args, field):
    """A field's value in a record; records older than a field carry what they ran with: a
    switch, their variant's choice; others, what the table of fields says (UNKNOWN where it knows
    nothing)."""
    if field not in old_args and FIELDS[field].before is UNKNOWN and field in SWITCHES \
            and old_args.get("variant") in VARIANTS:
        return VARIANTS[old_args["variant"]][field]
    return FIELDS[field].recorded(old_args)


def _listed_classes(path, count):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()][:count]


def _equivalent(field, old, new, cfg, saved_names):
    """Whether a changed value still means the same experiment."""
    if field == "augmentation":
        return not dataset_spec(cfg.dataset).augmented  # both settings read these the same way
    if field != "class_order" or any(kind in (old, new) for kind in CLASS_ORDERS):
        return False
    # A class list may move (another machine); what counts is the classes it names, in order.
    return _listed_classes(new, cfg.num_class) == saved_names()


def check_resume(cfg, record, record_path, saved_names):
    """Refuse args that would change what the finished sessions mean; return the other changes
    since ``record`` (the last finished session's) as {field: [before, now]}. ``saved_names()`` gives
    the class names of the run's saved order."""
    new, old_args = plain(cfg), record["args"]
    changes = {}
    for field, f in FIELDS.items():
        old = recorded_value(old_args, field)
        if old is UNKNOWN or old == new[field]:
            continue  # UNKNOWN: a field this record predates, with no default to compare with
        if f.fixed and not _equivalent(field, old, new[field], cfg, saved_names):
            raise ConfigError(f"args.{field} = {new[field]!r} but the finished sessions used "
                              f"{old!r} ({record_path}); changing it on resume would change "
                              f"{f.fixed}, so set it back, or start a new run at task 0 with "
                              "a new args.checkpoint and args.savepoint.")
        changes[field] = [old, new[field]]
    return changes


def read_manifest(store, start):
    """The run's manifest, or None where there is none yet (a fresh run, or one that predates it)."""
    if start == 0 or not os.path.exists(store.manifest_file):
        return None
    hint = (f"restore it, or move it away to resume without the record of earlier starts, and run "
            f"`{store.command(start)}` again")
    manifest = store.read_json(store.manifest_file, hint)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("resumes", []), list):
        raise ConfigError(f"{store.manifest_file} is corrupt (it is not a run manifest); {hint}.")
    return manifest


def overrides(cfg, store):
    """{field: value} of the fields the command line set (their values after checking)."""
    values = plain(cfg)
    return {name: values[name] for name in store.overridden()}


def started(cfg, store, start, device):
    """A fresh run's manifest."""
    return {"command": store.command(start), "overrides": overrides(cfg, store), "time": now(),
            "args": plain(cfg), "settings_by_session": settings_by_session(cfg, start),
            "seed": cfg.seed, **environment(device), "resumes": []}


def settings_by_session(cfg, start):
    """{session: {field: value}}: what each session from ``start`` on trains with (args.sessions
    applied), for every field that may change by session."""
    return {str(t): session_settings(cfg, t) for t in range(start, cfg.num_task)}


def rebuilt(record, record_path):
    """A manifest for a run that has none (it predates manifests, or the file was moved away): the
    args and device of the last finished session; what the run began with is unknown."""
    return {"command": None, "time": None, "args": record["args"],
            "seed": record["args"].get("seed"), "versions": None, "git": None,
            "device": {"name": record.get("device")},
            "rebuilt_from": record_path, "resumes": []}


def resumed(manifest, cfg, store, start, device, changes):
    """``manifest`` with this resume appended; also the lines that say what differs from before."""
    entry = {"command": store.command(start), "overrides": overrides(cfg, store), "task": start,
             "time": now(), "changed": changes,
             "settings_by_session": settings_by_session(cfg, start), **environment(device)}
    earlier = manifest.get("resumes", [])
    notes = setup_changes((earlier or [manifest])[-1], entry)
    return {**manifest, "resumes": earlier + [entry]}, notes


def setup_changes(before, after):
    """What differs between two environments, where known, as 'torch 2.4.0 → 2.14.1' strings."""
    pairs = [("device", (before.get("device") or {}).get("name"), after["device"]["name"]),
             ("git commit", (before.get("git") or {}).get("commit"), after["git"]["commit"])]
    pairs += [(name, (before.get("versions") or {}).get(name), version)
              for name, version in after["versions"].items()]
    return [f"{name} {old} → {new}" for name, old, new in pairs if old is not None and old != new]
