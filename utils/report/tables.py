"""The report's tables and files: every protocol's metrics per run (``utils/report/metrics.py``) or
pooled per group of seeds (mean, standard deviation and 95% confidence interval), as ``report.csv``,
``report.md``, ``accuracy.png`` (accuracy against the number of classes, with the paper's iTAML curve
for the same data set and split when one is known: ``paper_curves.json``), and ``continuum.png`` and
``loss.png`` when the records hold those measurements. The session loop calls ``write_report`` after
every session, so a run's checkpoint folder always holds an up-to-date report.
"""
import json
import os
import re

import pandas as pd

from utils import files
from utils.report.metrics import (METRICS, accuracy_matrix, common_sessions, pooled_continuum,
                                  pooled_loss, pooled_metrics, protocol_metrics, run_metrics)
from utils.report.plots import (BAND, continuum_figure, figure, loss_figure, paper_curve, png,
                                pooled_figure)
from utils.report.records import PROTOCOL_LABELS
from utils.report.runs import EXECUTION_FIELDS, group_runs, load_runs, seed

METRIC_NAMES = {"final_acc": "final", "avg_incremental_acc": "avg incremental",
                "avg_forgetting": "avg forgetting", "bwt": "BWT"}

def _column_key(column):
    """Names first, then the label's args, the metrics, sessions in order, continuum sizes in order."""
    lead = ["group", "run", "protocol", "n", "seeds", "sessions"]
    if column in lead:
        return 0, lead.index(column), ""
    if column.startswith("arg_"):
        return 1, 0, column
    numbered = re.match(r"(acc_after|final_acc_continuum)_(\d+)", column)
    if numbered:
        return (3 if numbered.group(1) == "acc_after" else 4), int(numbered.group(2)), column
    return (5, 0, "") if column == "runs" else (2, 0, "")  # the metrics keep their order


def _sorted_columns(table):
    return table[sorted(table.columns, key=_column_key)]


def _add_continuum(frame, by_p, names):
    """Columns final_acc_continuum_<p><suffix> for ``names`` {suffix: statistic}, on the
    task-agnostic row: the continuum size only matters when the task is inferred."""
    top = frame.protocol == "task_agnostic"
    for p, s in (by_p or {}).items():
        for suffix, stat in names.items():
            frame.loc[top, f"final_acc_continuum_{p}{suffix}"] = s[stat]
    return frame


def report_table(runs):
    """One row a run and protocol: the metrics, the accuracy after every session and, when the last
    record measured it, the final task-agnostic accuracy at every continuum size."""
    frames = [_add_continuum(run_metrics(records).assign(run=label), pooled_continuum([records]),
                             {"": "mean"})
              for label, records in runs]
    return _sorted_columns(pd.concat(frames, ignore_index=True))


def pooled_table(groups):
    """One row a group and protocol: n (seeds), the seeds, the sessions pooled, the label's args
    (arg_<field>), each metric's mean, sd and 95% CI half-width, the mean and sd of the accuracy
    after every session and of the final accuracy at every continuum size, and the run folders
    (joined by ";")."""
    frames = []
    for g in groups:
        records = [r for _, r in g.runs]
        frame = pooled_metrics(records).assign(
            group=g.label, seeds=" ".join(str(seed(r)) for r in records),
            runs=";".join(folder for folder, _ in g.runs),
            **{f"arg_{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
               for k, v in g.differing.items()})
        frames.append(_add_continuum(frame, pooled_continuum(records),
                                     {"_mean": "mean", "_sd": "sd"}))
    return _sorted_columns(pd.concat(frames, ignore_index=True))


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
             "forgotten, BWT negative. Definitions: docs/reporting.md, *Metrics and the report*.", ""]
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
              "", f"![accuracy against the number of classes]({files.ACCURACY_PLOT})", ""]
    for label, records in runs:
        parts += [f"## Accuracy matrices of `{label}`", "",
                  "A[i][j]: accuracy on task j after session i.", ""]
        for protocol, (_, text) in PROTOCOL_LABELS.items():
            a = accuracy_matrix(records, protocol)
            parts += [f"### {text.format(p=records[-1].get('continuum', '?'))}", "",
                      _md_table(["after session"] + list(a.columns),
                                [[str(i)] + [_num(v) for v in row] for i, row in
                                 zip(a.index, a.to_numpy())]), ""]
    parts += _continuum_section([(label, 1, pooled_continuum([records])) for label, records in runs],
                                pooled=False)
    parts += _loss_section(any(pooled_loss([records]) for _, records in runs), pooled=False)
    return "\n".join(parts)


def _pm(mean, sd):
    """mean ± sd, the mean alone when one seed leaves the spread undefined."""
    return _num(mean) if pd.isna(sd) else f"{mean:.2f} ± {sd:.2f}"


def pooled_markdown(groups, table):
    parts = ["# iTAML report, pooled over seeds", "",
             "Accuracies in % on all classes seen so far; forgetting is positive when a task was "
             "forgotten, BWT negative. Definitions: docs/reporting.md, *Metrics and the report*. Each cell is "
             "the mean ± the standard deviation (n−1) over the group's n seeds; *95% CI* is the "
             "half-width h of Student's t confidence interval of the mean, mean ± h with "
             "h = t(0.975, n−1)·sd/√n. Both are blank for a group of one seed.", "",
             "## Groups", "",
             "Runs whose args differ only in `seed` and in where and how they ran (`" +
             "`, `".join(EXECUTION_FIELDS) + "`) are seeds of one group; a group is named by where "
             "its args depart from those most groups share.", ""]
    for g in groups:
        parts += _group_lines(g)
    header = ["group", "protocol", "n", "sessions"]
    for m in METRICS:
        header += [METRIC_NAMES[m], "95% CI"]
    rows = [[f"`{r['group']}`", r["protocol"], str(r["n"]), str(r["sessions"])] +
            [cell for m in METRICS for cell in
             (_pm(r[f"{m}_mean"], r[f"{m}_sd"]), _ci(r[f"{m}_ci95_halfwidth"]))]
            for _, r in table.iterrows()]
    curves = {c["source"]: c for c in filter(None, (paper_curve(g.runs[0][1]) for g in groups))}
    for curve in curves.values():
        acc = curve["accuracy"]
        rows.append([f"iTAML, the paper ({curve['source']})", "task_agnostic", "–", str(len(acc)),
                     _num(acc[-1]), "–", _num(sum(acc) / len(acc))] + ["–"] * 5)
    parts += ["", "## Metrics", "", _md_table(header, rows), "",
              f"![mean accuracy against the number of classes; {BAND}]({files.ACCURACY_PLOT})", ""]
    parts += _runs_section(groups)
    parts += _continuum_section([(g.label, len(g.runs), pooled_continuum([r for _, r in g.runs]))
                                 for g in groups], pooled=True)
    parts += _loss_section(any(pooled_loss([r for _, r in g.runs]) for g in groups), pooled=True)
    return "\n".join(parts)


def _ci(halfwidth):
    return "–" if pd.isna(halfwidth) else f"± {halfwidth:.2f}"


def _group_lines(g):
    records = [r for _, r in g.runs]
    pooled = common_sessions(records)
    seeds = ", ".join(str(seed(r)) for r in records)
    lines = [f"- `{g.label}`: {_describe(pooled[0])}; n = {len(records)} (seeds {seeds}): " +
             ", ".join(f"`{folder}`" for folder, _ in g.runs)]
    finished = [len(r) for r in records]
    if len(set(finished)) > 1:
        lines.append(f"  - Its runs finished {', '.join(map(str, finished))} sessions: pooled over "
                     f"sessions 0–{len(pooled[0]) - 1}, the ones all of them finished.")
    return lines


def _runs_section(groups):
    """Every seed's task-agnostic metrics over the sessions its group pooled."""
    rows = []
    for g in groups:
        for (folder, _), records in zip(g.runs, common_sessions([r for _, r in g.runs])):
            m = protocol_metrics(records, "task_agnostic")
            rows.append([f"`{folder}`", f"`{g.label}`", str(seed(records)), str(len(records))] +
                        [_num(m[k]) for k in METRICS])
    return ["## Runs", "", "Each run's task-agnostic metrics over the sessions its group pooled.", "",
            _md_table(["run", "group", "seed", "sessions"] + [METRIC_NAMES[m] for m in METRICS],
                      rows), ""]


def _continuum_section(rows, pooled):
    """rows: [(label, n, {p: spread} or None)]; nothing when no run measured several sizes."""
    rows = [row for row in rows if row[2]]
    if not rows:
        return []
    sizes = sorted(set().union(*(by_p for _, _, by_p in rows)))
    header = (["group", "n"] if pooled else ["run"]) + [f"p = {p}" for p in sizes]
    cells = [[f"`{label}`"] + ([str(n)] if pooled else []) +
             [_pm(by_p[p]["mean"], by_p[p]["sd"]) if p in by_p else "–" for p in sizes]
             for label, n, by_p in rows]
    spread = " (mean ± sd over seeds)" if pooled else ""
    return ["## Final accuracy against the continuum size", "",
            f"Task-agnostic accuracy on all classes after the last session{spread} when the task "
            "is inferred from continua of p test samples of one task (the paper's analysis of "
            "p); the adapted models are the same for every p.", "", _md_table(header, cells), "",
            f"![final accuracy against the continuum size]({files.CONTINUUM_PLOT})", ""]


def _loss_section(present, pooled):
    if not present:
        return []
    mean = f"; each group's mean, {BAND}" if pooled else ""
    return ["## Training loss", "",
            f"The training loss of every epoch, the sessions one after another (dotted lines: a "
            f"session starts){mean}.", "", f"![training loss against the epoch]({files.LOSS_PLOT})", ""]


def _extra_figures(series, pooled):
    """continuum.png and loss.png, each only when some run or group measured it; ``series``
    [(label, [records])]."""
    contents = {}
    by_p = [(label, pooled_continuum(runs)) for label, runs in series]
    if any(b for _, b in by_p):
        contents[files.CONTINUUM_PLOT] = png(continuum_figure([x for x in by_p if x[1]], pooled))
    losses = [(label, pooled_loss(runs)) for label, runs in series]
    if any(loss for _, loss in losses):
        contents[files.LOSS_PLOT] = png(loss_figure([x for x in losses if x[1]], pooled))
    return contents


def _run_files(runs):
    """The per-run report of ``runs`` [(label, records)]: its table and {file name: content}."""
    table = report_table(runs)
    contents = {files.REPORT_CSV: table.to_csv(index=False, float_format="%.4f"),
                files.REPORT_MD: markdown(runs, table),
                files.ACCURACY_PLOT: png(figure(runs, "; ".join(_describe(r) for _, r in runs[:2])))}
    contents.update(_extra_figures([(label, [records]) for label, records in runs], pooled=False))
    return table, contents


def _pooled_files(groups, table):
    contents = {files.REPORT_CSV: table.to_csv(index=False, float_format="%.4f"),
                files.REPORT_MD: pooled_markdown(groups, table),
                files.ACCURACY_PLOT: png(pooled_figure(groups, table))}
    contents.update(_extra_figures([(f"{g.label} (n = {len(g.runs)})", [r for _, r in g.runs])
                                    for g in groups], pooled=True))
    return contents


def _write(out, contents):
    """Each file whole or not at all, even after a kill; returns the names written."""
    for name, content in contents.items():
        data = content.encode() if isinstance(content, str) else content
        files.atomic_write(os.path.join(out, name), lambda f, data=data: f.write(data))
    return list(contents)


def write_report(runs, out):
    """Write report.csv, report.md, accuracy.png (and continuum.png, loss.png when measured) for
    ``runs`` [(label, records)], one line a run, into ``out``; returns the per-run table."""
    table, files = _run_files(runs)
    _write(out, files)
    return table


def write_groups(groups, out):
    """The per-run report when every group holds one run, the pooled one otherwise; returns the
    pooled table and the names of the files written."""
    table = pooled_table(groups)
    if all(len(g.runs) == 1 for g in groups):
        files = _run_files([g.runs[0] for g in groups])[1]
    else:
        files = _pooled_files(groups, table)
    return table, _write(out, files)


def pooled_report(folders, out):
    """Load the runs in ``folders``, group the seeds of each setting and write the report files into
    ``out``; returns the pooled table (one row a group and protocol, ``pooled_table``)."""
    return write_groups(group_runs(load_runs(folders)), out)[0]


def format_metrics(table):
    shown = table[["run", "protocol", "sessions", *METRICS]].rename(columns=METRIC_NAMES)
    return shown.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="–")


def format_pooled(table):
    """Mean ± sd of every metric, and the 95% CI half-width of the two accuracies."""
    shown = table[["group", "protocol", "n", "sessions"]].copy()
    for m in METRICS:
        shown[f"{METRIC_NAMES[m]} (mean ± sd)"] = [
            _pm(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_sd"])]
        if m in ("final_acc", "avg_incremental_acc"):
            shown[f"{METRIC_NAMES[m]} 95% CI"] = table[f"{m}_ci95_halfwidth"].map(_ci)
    return shown.to_string(index=False)
