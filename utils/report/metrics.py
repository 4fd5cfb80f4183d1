"""The metrics continual-learning papers compare runs by, computed from session records with pandas.

For each protocol: the accuracy matrix A[i][j] (accuracy on task j after session i), the final accuracy,
the average incremental accuracy, average forgetting and backward transfer. Accuracies are percentages;
forgetting is positive when a task was forgotten, backward transfer negative. Over several seeds of one
setting: the mean, the standard deviation (n−1) and Student's t confidence interval of each metric.
"""
import numpy as np
import pandas as pd

from utils.report.records import PROTOCOL_LABELS

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


def spread(values):
    """Mean, standard deviation (n−1) and the half-width of the 95% confidence interval of the mean,
    mean ± t_{0.975, n−1}·sd/√n (Student's t: a handful of seeds is too few for the normal quantile).
    With one value only the mean is defined; sd and half-width are NaN."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 2:
        return {"mean": float(v[0]), "sd": float("nan"), "ci95_halfwidth": float("nan")}
    sd = float(np.std(v, ddof=1))
    from scipy import stats  # here: importing scipy.stats costs every run's process a second or more
    return {"mean": float(np.mean(v)), "sd": sd,
            "ci95_halfwidth": float(stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n))}


def common_sessions(runs):
    """The first sessions every run of ``runs`` [records] finished: only those can be pooled."""
    n = min(len(records) for records in runs)
    return [records[:n] for records in runs]


def pooled_metrics(runs):
    """One row a protocol: each metric's mean, sd and 95% CI half-width over the runs (seeds), and
    the mean and sd of the accuracy on all seen classes after every session. Runs are cut to the
    sessions all of them finished."""
    runs = common_sessions(runs)
    rows = []
    for protocol, (key, _) in PROTOCOL_LABELS.items():
        row = {"protocol": protocol, "n": len(runs), "sessions": len(runs[0])}
        per_run = [protocol_metrics(records, protocol) for records in runs]
        for m in METRICS:
            row.update({f"{m}_{k}": v for k, v in spread([r[m] for r in per_run]).items()})
        for t in range(len(runs[0])):
            s = spread([records[t][key] for records in runs])
            row.update({f"acc_after_{t}_mean": s["mean"], f"acc_after_{t}_sd": s["sd"]})
        rows.append(row)
    return pd.DataFrame(rows)


def continuum_accuracy(records):
    """{continuum size p: final task-agnostic accuracy} from the last record, sizes ascending, or
    None for records written before the report measured several sizes."""
    found = records[-1].get("acc_task_agnostic_by_continuum")
    if not found:
        return None
    return {int(p): float(found[p]) for p in sorted(found, key=int)}


def pooled_continuum(runs):
    """{p: spread} of the final task-agnostic accuracy over the runs, for the sizes every run
    measured; None when a run's last record lacks them."""
    found = [continuum_accuracy(records) for records in common_sessions(runs)]
    if any(f is None for f in found):
        return None
    sizes = sorted(set.intersection(*(set(f) for f in found)))
    return {p: spread([f[p] for f in found]) for p in sizes} or None


def pooled_loss(runs):
    """The mean and sd (NaN for one run) over the runs of the training loss at every epoch, sessions
    one after another, each cut to the epochs every run trained; the epoch each session starts at.
    None when a record lacks ``train_loss_per_epoch``."""
    runs = common_sessions(runs)
    if any("train_loss_per_epoch" not in r for records in runs for r in records):
        return None  # records written before the loss was kept
    blocks = []
    for t in range(len(runs[0])):
        epochs = min(len(records[t]["train_loss_per_epoch"]) for records in runs)
        blocks.append(np.array([records[t]["train_loss_per_epoch"][:epochs] for records in runs],
                               dtype=float).reshape(len(runs), epochs))
    starts = np.cumsum([0] + [b.shape[1] for b in blocks[:-1]]).tolist()
    losses = np.concatenate(blocks, axis=1)
    sd = np.std(losses, axis=0, ddof=1) if len(runs) > 1 else np.full(losses.shape[1], np.nan)
    return losses.mean(axis=0), sd, starts
