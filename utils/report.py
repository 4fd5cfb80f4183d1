"""``python3 -m utils.report <checkpoint folder> [more folders] [--out DIR]``: metrics, tables and a plot.

Reads the session records of one or more runs, computes every protocol's metrics (``utils/metrics.py``),
prints them, and writes ``report.csv``, ``report.md`` and ``accuracy.png`` (accuracy against the number
of classes, one line per protocol and run, with the paper's iTAML curve for the same data set and split
when one is known: ``utils/paper_curves.json``). The session loop calls ``write_report`` after every
session, so a run's checkpoint folder always holds an up-to-date report.
"""
import argparse
import io
import json
import os
import re
import sys

import pandas as pd

from utils.checkpoint import atomic_write, write_text
from utils.errors import ConfigError
from utils.metrics import METRICS, accuracy_matrix, run_metrics
from utils.records import PROTOCOL_LABELS

SESSION_FILE = re.compile(r"session_(\d+)\.json$")
PAPER_CURVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_curves.json")
METRIC_NAMES = {"final_acc": "final", "avg_incremental_acc": "avg incremental",
                "avg_forgetting": "avg forgetting", "bwt": "BWT"}
# protocol -> (colour, marker, legend text); the paper's protocol is drawn on top of the others
STYLES = {"task_agnostic": ("tab:blue", "o", "task-agnostic, continuum of {p}"),
          "per_sample": ("tab:orange", "s", "task-agnostic, continuum of 1"),
          "task_aware": ("tab:green", "^", "task-aware (true task given)"),
          "base": ("tab:red", "v", "base model, no adaptation")}
RUN_STYLES = ["-", "--", ":", "-."]


def load_run(folder):
    """The records of sessions 0..n−1 in a checkpoint folder, in order."""
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder; give the args.checkpoint folder of a run.")
    found = sorted(int(m.group(1)) for m in map(SESSION_FILE.match, os.listdir(folder)) if m)
    if not found:
        raise ConfigError(f"{folder} holds no session_<t>.json; give the args.checkpoint folder of "
                          "a run that has finished at least one session.")
    gaps = [t for t in range(found[-1]) if t not in found]
    if gaps:
        raise ConfigError(f"{os.path.join(folder, f'session_{gaps[0]}.json')} is missing while "
                          "later sessions exist; restore it, the metrics need every session.")
    records = []
    for t in found:
        path = os.path.join(folder, f"session_{t}.json")
        try:
            with open(path) as f:
                record = json.load(f)
            if record["session"] != t or any(p not in record["per_task"] for p in PROTOCOL_LABELS):
                raise ValueError("its session number or per-task accuracies are wrong")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{path} is corrupt ({type(e).__name__}: {e}); restore it or rerun "
                              f"session {t}.") from None
        records.append(record)
    return records


def paper_curve(records):
    """The paper's curve for this run's data set and split, or None."""
    args = records[0].get("args", {})
    with open(PAPER_CURVES) as f:
        known = json.load(f)["curves"]
    for curve in known:
        if all(args.get(k) == curve[k] for k in ("dataset", "num_class", "class_per_task")):
            return curve
    return None


def report_table(runs):
    """One row a run and protocol: the metrics and the accuracy after every session."""
    frames = [run_metrics(records).assign(run=label) for label, records in runs]
    table = pd.concat(frames, ignore_index=True)
    return table[["run"] + [c for c in table.columns if c != "run"]]


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(rows_i) + " |" for rows_i in rows]
    return "\n".join(lines)


def _num(v):
    return "–" if pd.isna(v) else f"{v:.2f}"


def _describe(records):
    args = records[0].get("args", {})
    return (f"{args.get('dataset', '?')}, {args.get('num_task', '?')} tasks × "
            f"{args.get('class_per_task', '?')} classes, {args.get('variant', '?')} variant, "
            f"{len(records)} of {args.get('num_task', '?')} sessions")


def markdown(runs, table):
    parts = ["# iTAML report", "",
             "Accuracies in % on all classes seen so far; forgetting is positive when a task was "
             "forgotten, BWT negative. Definitions: the README's *Metrics* section.", ""]
    parts += [f"- `{label}`: {_describe(records)}" for label, records in runs] + [""]
    rows = [[f"`{r['run']}`", r["protocol"], str(r["sessions"])] + [_num(r[m]) for m in METRICS]
            for _, r in table.iterrows()]
    curves = {c["source"]: c for c in filter(None, (paper_curve(records) for _, records in runs))}
    for curve in curves.values():
        acc = curve["accuracy"]
        rows.append([f"iTAML, the paper ({curve['source']})", "task_agnostic", str(len(acc)),
                     _num(acc[-1]), _num(sum(acc) / len(acc)), "–", "–"])
    parts += ["## Metrics", "",
              _md_table(["run", "protocol", "sessions"] + [METRIC_NAMES[m] for m in METRICS], rows),
              "", "![accuracy against the number of classes](accuracy.png)", ""]
    for label, records in runs:
        parts += [f"## Accuracy matrices of `{label}`", "",
                  "A[i][j]: accuracy on task j after session i.", ""]
        for protocol, (_, text) in PROTOCOL_LABELS.items():
            a = accuracy_matrix(records, protocol)
            parts += [f"### {text.format(p=records[-1].get('continuum', '?'))}", "",
                      _md_table(["after session"] + list(a.columns),
                                [[str(i)] + [_num(v) for v in row] for i, row in
                                 zip(a.index, a.to_numpy())]), ""]
    return "\n".join(parts)


def figure(runs):
    """Accuracy on all seen classes against the number of classes, with the paper's curve."""
    from matplotlib.figure import Figure  # no pyplot: no display, no global figure state
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    shown, ticks = set(), set()
    for n, (label, records) in enumerate(runs):
        classes = [r["seen_classes"] for r in records]
        ticks.update(classes)
        style = RUN_STYLES[n % len(RUN_STYLES)]
        for protocol, (key, _) in PROTOCOL_LABELS.items():
            color, marker, text = STYLES[protocol]
            name = text.format(p=records[-1].get("continuum", "?"))
            name += f" ({label})" if len(runs) > 1 else ""
            top = protocol == "task_agnostic"
            ax.plot(classes, [r[key] for r in records], style, marker=marker, markersize=4,
                    color=color, label=name, linewidth=2 if top else 1.2, zorder=3 if top else 2)
        curve = paper_curve(records)
        if curve and curve["source"] not in shown:
            shown.add(curve["source"])
            paper_classes = [curve["class_per_task"] * (k + 1) for k in range(len(curve["accuracy"]))]
            ticks.update(paper_classes)
            ax.plot(paper_classes, curve["accuracy"],
                    "k--", marker="x", label=f"iTAML, the paper ({curve['source']})")
    if len(ticks) <= 20:
        ax.set_xticks(sorted(ticks))
    ax.set_xlabel("number of classes")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_ylim(0, 100.5)
    ax.set_title("; ".join(_describe(records) for _, records in runs[:2]), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(runs, out):
    """Write report.csv, report.md and accuracy.png for ``runs`` [(label, records)] into ``out``."""
    table = report_table(runs)
    write_text(os.path.join(out, "report.csv"), table.to_csv(index=False, float_format="%.4f"))
    write_text(os.path.join(out, "report.md"), markdown(runs, table))
    image = png(figure(runs))
    atomic_write(os.path.join(out, "accuracy.png"), lambda f: f.write(image))
    return table


def format_metrics(table):
    shown = table[["run", "protocol", "sessions", *METRICS]].rename(columns=METRIC_NAMES)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="–")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m utils.report",
        description="Metrics, accuracy matrices and the accuracy plot of one or more iTAML runs.")
    parser.add_argument("folders", nargs="+", help="args.checkpoint folders of runs")
    parser.add_argument("--out", help="where to write report.csv, report.md and accuracy.png "
                        "(default: the run's folder for one run, ./report for several)")
    options = parser.parse_args(argv)
    try:
        runs = [(os.path.normpath(folder), load_run(folder)) for folder in options.folders]
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    out = options.out or (runs[0][0] if len(runs) == 1 else "report")
    table = write_report(runs, out)
    print(format_metrics(table))
    print(f"wrote report.csv, report.md and accuracy.png to {out}")


if __name__ == "__main__":
    main()
