"""Runs as the report sees them: the session records in a run's checkpoint folder (``load_run``), and
runs that differ only in the seed and in where and how they ran (``EXECUTION_FIELDS``) grouped as the
seeds of one setting, each group labelled by where it departs from the others (``group_runs``)."""
import json
import os
from collections import namedtuple

from utils import files
from utils.errors import ConfigError
from utils.fields import SWITCHES, VARIANTS, of_kind
from utils.report.records import check_record

# args that say where a run was executed and where its files are, not what it computes: seeds of one
# setting may differ in them
EXECUTION_FIELDS = of_kind("machine", "place")
# runs: [(folder, records)]; setting: the args that define it; differing: {field: value} in its label
Group = namedtuple("Group", "label runs setting differing")


def load_run(folder):
    """The records of sessions 0..n−1 in a checkpoint folder, in order."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder; give the args.checkpoint folder of a run.")
    found = files.finished_sessions(folder)
    if not found:
        raise ConfigError(f"{folder} holds no session_<t>.json; give the args.checkpoint folder of "
                          "a run that has finished at least one session.")
    gaps = [t for t in range(found[-1]) if t not in found]
    if gaps:
        raise ConfigError(f"{files.session_record(folder, gaps[0])} is missing while "
                          "later sessions exist; restore it, the metrics need every session.")
    records = []
    for t in found:
        path = files.session_record(folder, t)
        try:
            with open(path) as f:
                record = json.load(f)
            check_record(record, t)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{path} is corrupt ({type(e).__name__}: {e}); restore it or rerun "
                              f"session {t}.") from None
        records.append(record)
    return records


def load_runs(folders):
    """[(folder, records)] of every folder, each folder given once."""
    if not folders:
        raise ConfigError("no run folder given; give the args.checkpoint folder of at least one run.")
    seen = {}
    for folder in folders:
        real = os.path.realpath(folder)
        if real in seen:
            also = "" if seen[real] == folder else f" (also as {seen[real]})"
            raise ConfigError(f"{folder} is given twice{also}; give each run once, or its seed "
                              "would count twice.")
        seen[real] = folder
    return [(os.path.normpath(folder), load_run(folder)) for folder in folders]


def setting(records):
    """What a run computes: the args of its last record but the seed and where and how it ran."""
    args = records[-1].get("args", {})
    return {k: v for k, v in args.items() if k not in EXECUTION_FIELDS and k != "seed"}


def seed(records):
    return records[-1].get("args", {}).get("seed")


def group_runs(runs):
    """Runs [(folder, records)] grouped by setting, in the order they came, labelled (``Group``)."""
    buckets = {}
    for run in runs:
        key = json.dumps(setting(run[1]), sort_keys=True, default=str)
        buckets.setdefault(key, []).append(run)
    members = [group for bucket in buckets.values() for group in _split_reruns(bucket)]
    order = {id(run): i for i, run in enumerate(runs)}
    members.sort(key=lambda group: order[id(group[0])])  # single runs stay in the order given
    return _label(members)


def _split_reruns(bucket):
    """Runs of one setting and one seed are reruns to compare side by side, not seeds to pool; a seed
    repeated among other seeds would count twice, so that is an error."""
    seeds = [seed(records) for _, records in bucket]
    if all(s == seeds[0] for s in seeds):
        return [[run] for run in bucket]
    for i, s in enumerate(seeds):
        if s in seeds[:i]:
            raise ConfigError(f"{bucket[seeds.index(s)][0]} and {bucket[i][0]} are the same setting "
                              f"with the same seed {s}; give only one of them, or that seed would "
                              "count twice.")
    return [bucket]


def _label(members):
    """Each group's label: where its setting departs from the one most groups share (the first
    group's where there is a tie), so a study of one-at-a-time changes reads "r=2", "beta=1"; the
    group that departs nowhere names every field that differs between the groups. A variant switch
    counts as set only where it departs from its own variant. With nothing differing, or two labels
    alike, the common part of the group's folder names is added."""
    settings = [setting(runs[0][1]) for runs in members]
    marked = [_against_variant(s) for s in settings]
    fields = list(dict.fromkeys(k for s in settings for k in s))  # the args' own order
    missing = object()
    differing = [k for k in fields if any(m.get(k, missing) != marked[0].get(k, missing)
                                          for m in marked)]
    usual = {k: _most_common([m.get(k, missing) for m in marked]) for k in differing}
    labels = []
    for s, m in zip(settings, marked):
        departs = [k for k in differing if m.get(k, missing) != usual[k]]
        labels.append(", ".join(f"{k}={s.get(k, '–')}" for k in departs or differing))
    groups = []
    for label, runs, s in zip(labels, members, settings):
        if not label or labels.count(label) > 1:
            folders = _common_part([folder for folder, _ in runs])
            label = f"{label} ({folders})" if label else folders
        groups.append(Group(label, runs, s, {k: s.get(k) for k in differing}))
    return groups


def _against_variant(s):
    """A setting with each variant switch that equals its variant's value marked as such, so that
    the variant alone tells two presets apart."""
    preset = VARIANTS.get(s.get("variant"), {})
    return {k: ("(the variant's)" if k in SWITCHES and k in preset and v == preset[k] else v)
            for k, v in s.items()}


def _most_common(values):
    """The value most entries hold; the first of them where several are as common."""
    counts = [sum(json.dumps(w, default=str) == json.dumps(v, default=str) for w in values)
              for v in values]
    return values[counts.index(max(counts))]


def _common_part(folders):
    if len(folders) == 1:
        return folders[0]
    common = os.path.commonprefix(folders).rstrip("/_-. ")
    return common or " + ".join(folders)
