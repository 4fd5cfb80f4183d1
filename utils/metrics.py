"""The metrics continual-learning papers compare runs by, computed from session records with pandas.

For each protocol: the accuracy matrix A[i][j] (accuracy on task j after session i), the final accuracy,
the average incremental accuracy, average forgetting and backward transfer. Accuracies are percentages;
forgetting is positive when a task was forgotten, backward transfer negative.
"""
import numpy as np
import pandas as pd

from utils.records import PROTOCOL_LABELS

METRICS = ("final_acc", "avg_incremental_acc", "avg_forgetting", "bwt")


def accuracy_matrix(records, protocol):
    """A[i][j]: accuracy on task j's test samples after session i; NaN where j has not arrived yet."""
    n = len(records)
    a = np.full((n, n), np.nan)
    for i, record in enumerate(records):
        row = record["per_task"][protocol]
        a[i, :len(row)] = row
    return pd.DataFrame(a, index=pd.RangeIndex(n, name="after session"),
                        columns=pd.Index([f"T{j}" for j in range(n)], name="task"))


def protocol_metrics(records, protocol):
    """The four metrics of one protocol over sessions 0..n−1 of one run.

    - final_acc: accuracy on all seen classes after the last session.
    - avg_incremental_acc: mean over sessions of the accuracy on all classes seen so far (Rebuffi et al.,
      iCaRL), the first session included.
    - avg_forgetting: mean over tasks j < last of max_{l<last} A[l][j] − A[last][j] (Chaudhry et al.,
      2018); undefined (NaN) after one session.
    - bwt: mean over tasks j < last of A[last][j] − A[j][j] (Lopez-Paz and Ranzato, GEM, 2017).
    """
    key = PROTOCOL_LABELS[protocol][0]
    seen = pd.Series([r[key] for r in records], dtype=float)
    a = accuracy_matrix(records, protocol).to_numpy()
    last = len(records) - 1
    forgetting = bwt = float("nan")
    if last > 0:
        earlier = a[:last, :last]  # NaN above the diagonal: a task is not measured before it arrives
        forgetting = float(np.mean(np.nanmax(earlier, axis=0) - a[last, :last]))
        bwt = float(np.mean(a[last, :last] - np.diag(a)[:last]))
    return {"final_acc": float(seen.iloc[-1]), "avg_incremental_acc": float(seen.mean()),
            "avg_forgetting": forgetting, "bwt": bwt}


def run_metrics(records):
    """One row a protocol: the metrics and the accuracy on all seen classes after every session."""
    rows = []
    for protocol, (key, _) in PROTOCOL_LABELS.items():
        row = {"protocol": protocol, "sessions": len(records), **protocol_metrics(records, protocol)}
        row.update({f"acc_after_{r['session']}": r[key] for r in records})
        rows.append(row)
    return pd.DataFrame(rows)
