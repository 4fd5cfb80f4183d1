"""The report's figures: accuracy against the number of classes (per run, or each group's mean over
seeds with a band), final accuracy against the continuum size, and the training loss over epochs.

Drawn on ``matplotlib.figure.Figure`` objects, never pyplot, so no display and no global state are
involved; ``png`` renders one to bytes for an atomic write.
"""
import io
import json
import os
import textwrap

import numpy as np

from utils.fields import FIELDS
from utils.report.records import PROTOCOL_LABELS

PAPER_CURVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_curves.json")
# protocol -> (colour, marker, legend text); the paper's protocol is drawn on top of the others
STYLES = {"task_agnostic": ("tab:blue", "o", "task-agnostic, continuum of {p}"),
          "per_sample": ("tab:orange", "s", "task-agnostic, continuum of 1"),
          "task_aware": ("tab:green", "^", "task-aware (true task given)"),
          "base": ("tab:red", "v", "base model, no adaptation")}
RUN_STYLES = ["-", "--", ":", "-."]
BAND = "band: ± 1 standard deviation (n−1) over seeds"


def paper_curve(records):
    """The paper's curve for this run's data set and split, or None."""
    args = records[0].get("args", {})
    with open(PAPER_CURVES) as f:
        known = json.load(f)["curves"]
    for curve in known:  # each names the fields of the split the paper measured it on
        if all(args.get(k) == v for k, v in curve.items() if k in FIELDS):
            return curve
    return None


def figure(runs, title):
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
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def pooled_figure(groups, table):
    """One panel a protocol: each group's mean accuracy on all seen classes against the number of
    classes, with a band of ± one sd over its seeds, and the paper's curve on the task-agnostic one."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
    ticks = set()
    for ax, (protocol, (_, text)) in zip(axes, PROTOCOL_LABELS.items()):
        for n, g in enumerate(groups):
            row = table[(table.group == g.label) & (table.protocol == protocol)].iloc[0]
            classes = [r["seen_classes"] for r in g.runs[0][1][:row.sessions]]
            ticks.update(classes)
            mean = np.array([row[f"acc_after_{t}_mean"] for t in range(row.sessions)])
            sd = np.array([row[f"acc_after_{t}_sd"] for t in range(row.sessions)])
            _band(ax, classes, mean, sd, _color(n, len(groups)), f"{g.label} (n = {row.n})",
                  marker="o")
        continua = {g.runs[0][1][-1].get("continuum", "?") for g in groups}
        ax.set_title(text.format(p=continua.pop() if len(continua) == 1 else "each group's p"),
                     fontsize=9)
        ax.set_ylim(0, 100.5)
        ax.grid(alpha=0.3)
    ticks.update(_paper_lines(axes[0], [g.runs[0][1] for g in groups]))
    if len(ticks) <= 20:
        axes[0].set_xticks(sorted(ticks))
    for ax in axes[2:]:
        ax.set_xlabel("number of classes")
    for ax in axes[::2]:
        ax.set_ylabel("accuracy on all seen classes (%)")
    fig.suptitle(f"Mean over seeds; {BAND}", fontsize=10)
    _legend(fig, axes[0], len(groups), "lower left")
    return fig


def _color(n, total):
    """The n-th of ``total`` lines' colour: matplotlib's ten, or twenty paler pairs beyond ten."""
    return f"C{n}" if total <= 10 else matplotlib_colormap("tab20")(n % 20)


def matplotlib_colormap(name):
    from matplotlib import colormaps
    return colormaps[name]


def _legend(fig, ax, entries, inside):
    """A legend inside the axes for a few lines; beside them, long labels wrapped, for many (a
    study's groups would cover the curves)."""
    if entries <= 4:
        ax.legend(fontsize=7, loc=inside)
        fig.tight_layout()
        return
    handles, labels = ax.get_legend_handles_labels()
    labels = [textwrap.fill(label, 38, subsequent_indent="  ") for label in labels]
    fig.set_figwidth(fig.get_figwidth() + 3.2)
    right = 1 - 3.3 / fig.get_figwidth()  # the plots keep the left part, the legend the rest
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(right, 0.5))


def _band(ax, x, mean, sd, color, label, marker=None):
    """A mean curve and, where the sd is defined (two seeds or more), its ± one sd band."""
    ax.plot(x, mean, "-", color=color, marker=marker, markersize=4, linewidth=1.6, label=label)
    if not np.isnan(sd).all():
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)


def _paper_lines(ax, records_list):
    """The paper's curves for these runs' settings, each once; returns their numbers of classes."""
    classes = set()
    for curve in {c["source"]: c for c in filter(None, map(paper_curve, records_list))}.values():
        x = [curve["class_per_task"] * (k + 1) for k in range(len(curve["accuracy"]))]
        classes.update(x)
        ax.plot(x, curve["accuracy"], "k--", marker="x", label=f"iTAML, the paper ({curve['source']})")
    return classes


def continuum_figure(series, pooled):
    """Final task-agnostic accuracy against the continuum size p on a log axis; ``series``
    [(label, {p: spread})], a band of ± one sd where a group has several seeds."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    sizes = set()
    for n, (label, by_p) in enumerate(series):
        p = sorted(by_p)
        sizes.update(p)
        _band(ax, p, np.array([by_p[q]["mean"] for q in p]), np.array([by_p[q]["sd"] for q in p]),
              _color(n, len(series)), label, marker="o")
    ax.set_xscale("log")
    ax.set_xticks(sorted(sizes), [str(p) for p in sorted(sizes)])
    ax.set_xticks([], minor=True)  # log minor ticks would label sizes nobody measured
    ax.set_xlabel("continuum size p (test samples of one task, their task predicted together)")
    ax.set_ylabel("final task-agnostic accuracy (%)")
    ax.set_ylim(0, 100.5)
    ax.set_title("Final accuracy against the continuum size" + (f"\n{BAND}" if pooled else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(series), "lower right")
    return fig


def loss_figure(series, pooled):
    """Training loss against the epoch, sessions one after another, a dotted line where each starts;
    ``series`` [(label, (mean, sd, session starts))]."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for n, (label, (mean, sd, starts)) in enumerate(series):
        color = _color(n, len(series))
        _band(ax, np.arange(1, len(mean) + 1), mean, sd, color, label)
        for start in starts[1:]:
            ax.axvline(start + 0.5, color=color, linestyle=":", linewidth=0.8, alpha=0.7)
    ax.set_xlabel("epoch, sessions one after another (dotted lines: a session starts)")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss" + (f"\nmean over seeds, {BAND}" if pooled else ""), fontsize=9)
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(series), "upper right")
    return fig


def png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
