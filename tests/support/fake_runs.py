"""Session files written by hand, with answers worked out by hand, for the report's tests."""
import json
import os

# Per-task accuracies after sessions 0, 1, 2 (A[i][j]); the all-seen accuracy of each session.
TABLES = {
    "task_agnostic": ([[90.0], [80.0, 70.0], [60.0, 75.0, 50.0]], [90.0, 75.0, 61.0]),
    "per_sample": ([[50.0], [40.0, 30.0], [20.0, 30.0, 40.0]], [50.0, 35.0, 30.0]),
    "task_aware": ([[100.0], [100.0, 100.0], [100.0, 100.0, 100.0]], [100.0, 100.0, 100.0]),
    "base": ([[50.0], [45.0, 30.0], [20.0, 30.0, 40.0]], [50.0, 37.5, 30.0]),
}


def write_run(folder, sessions=3, dataset="digits", num_class=6, class_per_task=2):
    """A run's session_<t>.json files holding TABLES' accuracies; returns ``folder``."""
    os.makedirs(folder, exist_ok=True)
    for t in range(sessions):
        record = {"session": t, "seen_classes": class_per_task * (t + 1), "continuum": 20,
                  "per_task": {p: rows[t] for p, (rows, _) in TABLES.items()},
                  "args": {"dataset": dataset, "num_class": num_class,
                           "class_per_task": class_per_task, "num_task": 3, "variant": "paper"}}
        record.update({f"acc_{p}": seen[t] for p, (_, seen) in TABLES.items()})
        with open(os.path.join(folder, f"session_{t}.json"), "w") as f:
            json.dump(record, f)
    return folder
