"""A session's record: built (``make_record``) and checked (``check_record``) here alone, and shown as
one CSV row and a readable table.

A record is one JSON object: the session, what its evaluation measured (``utils.inference.evaluate``),
how its model was trained (``TRAINING``: a re-evaluation carries these over), how long it took, where
it ran, and the args it ran with.
"""
import csv
import io
from numbers import Real

from utils.tasks import seen_classes

# protocol -> (record key, what the number means)
PROTOCOL_LABELS = {
    "task_agnostic": ("acc_task_agnostic", "task-agnostic, continuum of {p} (the paper's number)"),
    "per_sample": ("acc_per_sample", "task-agnostic, continuum of 1 (no test-batch assumption)"),
    "task_aware": ("acc_task_aware", "task-aware, true task given (the release's acc_task)"),
    "base": ("acc_base", "base model, argmax over all seen classes, no adaptation"),
}

# The keys that say how a session's model was trained, in a record's order (those a record holds).
TRAINING = ("method", "eta", "variant", "er_loss", "session_settings", "model_selection", "selected_epoch",
            "selection_test_acc_per_epoch", "final_train_loss", "train_loss_per_epoch",
            "memory_exemplars", "world_size")
TIMES = ("train_seconds", "eval_seconds", "seconds")


def make_record(t, cfg, results, training, times, device):
    """Session ``t``'s record: ``results`` of its evaluation, ``training`` {TRAINING key: value},
    ``times`` {TIMES key: seconds}, the device, and ``cfg``, the args."""
    return {"session": t, "seen_classes": seen_classes(t, cfg.class_per_task),
            "continuum": cfg.continuum, **results,
            **{k: training[k] for k in TRAINING if k in training and k != "world_size"},
            **{k: times[k] for k in TIMES}, "device": str(device), "args": vars(cfg),
            **({"world_size": training["world_size"]} if "world_size" in training else {})}


def training_of(record):
    """The TRAINING keys of a record, as ``make_record`` takes them."""
    return {k: record[k] for k in TRAINING if k in record}


def _is_number(v):
    return isinstance(v, Real) and not isinstance(v, bool)


def check_record(record, t):
    """Raise ValueError, saying what is wrong, unless ``record`` is a record of session ``t`` that
    the summary, the report and a resume can use."""
    if not isinstance(record, dict):
        raise ValueError("it is not a JSON object")
    if record.get("session") != t:
        raise ValueError(f"its session number is {record.get('session')!r}, not {t}")
    if not isinstance(record.get("args"), dict):
        raise ValueError("its args are not a mapping of field to value")
    per_task = record.get("per_task")
    if not isinstance(per_task, dict) or any(p not in per_task for p in PROTOCOL_LABELS):
        raise ValueError("its per-task accuracies are missing a protocol")
    # The optional keys later versions added must hold numbers, or the plots fail far from here.
    by_p = record.get("acc_task_agnostic_by_continuum", {})
    if not isinstance(by_p, dict) or not all(
            str(p).isdigit() and int(p) > 0 and _is_number(v) for p, v in by_p.items()):
        raise ValueError("acc_task_agnostic_by_continuum is not a mapping of continuum size to "
                         "accuracy")
    loss = record.get("train_loss_per_epoch", [])
    if not isinstance(loss, list) or not all(_is_number(v) for v in loss):
        raise ValueError("train_loss_per_epoch is not a list of numbers")


SUMMARY_COLUMNS = ["session", "seen_classes", "acc_task_agnostic", "acc_per_sample",
                   "acc_task_aware", "acc_base", "task_prediction_acc",
                   "task_prediction_acc_per_sample", "continuum", "seconds"]


def summary_csv(records):
    """summary.csv, one row a finished session, rebuilt from the records so it never repeats a row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for record in sorted(records, key=lambda r: r["session"]):
        writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v)
                         for k, v in record.items() if k in SUMMARY_COLUMNS})
    return out.getvalue()


def format_table(record):
    """The accuracies of one session, every protocol on all seen classes and per task."""
    tasks = len(record["per_task"]["base"])
    head = f"{'protocol':<66}{'all':>7}" + "".join(f"{f'T{j}':>7}" for j in range(tasks))
    lines = [f"session {record['session']}: {record['seen_classes']} classes seen, "
             f"{record['num_test_samples']} test samples, {record['seconds']:.1f} s", head,
             "-" * len(head)]
    for name, (key, label) in PROTOCOL_LABELS.items():
        label = label.format(p=record["continuum"])
        cells = "".join(f"{a:7.2f}" for a in record["per_task"][name])
        lines.append(f"{label:<66}{record[key]:7.2f}{cells}")
    lines.append(f"task prediction: {record['task_prediction_acc']:.2f}% of samples with "
                 f"continua of {record['continuum']}, {record['task_prediction_acc_per_sample']:.2f}%"
                 " sample by sample")
    by_size = record.get("acc_task_agnostic_by_continuum")  # absent from records before it existed
    if by_size:
        lines.append("task-agnostic by continuum size: "
                     + ", ".join(f"{p}: {a:.2f}" for p, a in by_size.items()))
    return "\n".join(lines)
