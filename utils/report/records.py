"""A session's record: the accuracies of every protocol, as JSON, one CSV row and a readable table."""
import csv
import io

# protocol -> (record key, what the number means)
PROTOCOL_LABELS = {
    "task_agnostic": ("acc_task_agnostic", "task-agnostic, continuum of {p} (the paper's number)"),
    "per_sample": ("acc_per_sample", "task-agnostic, continuum of 1 (no test-batch assumption)"),
    "task_aware": ("acc_task_aware", "task-aware, true task given (the release's acc_task)"),
    "base": ("acc_base", "base model, argmax over all seen classes, no adaptation"),
}

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
