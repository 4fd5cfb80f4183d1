"""The pooled report: seeds of one setting grouped, their mean, sd (n−1) and Student's t interval
checked against numbers worked out by hand; the continuum table and plot, the loss plot, runs that
finished different numbers of sessions, and the errors for bad folders."""
import json
import math
import os
import warnings

import pandas as pd
import pytest
from PIL import Image

from tests.support.fake_runs import TABLES, write_run
from utils.errors import ConfigError
from utils.report import metrics, plots
from utils.report import runs as report_runs
from utils.report import tables
from utils.report.__main__ import main as report_main

T_975_2 = 4.302653  # Student's t quantile 0.975 with 2 degrees of freedom, from a table
SIZES = [1, 2, 5, 10, 20, 50]


def write_seed(folder, seed, shift=0.0, sessions=3, continuum=False, loss=False, **args):
    """A run whose every accuracy is TABLES' plus ``shift``; its task-agnostic final accuracy is
    61 + shift and its accuracy at continuum size p is 40 + p + shift."""
    os.makedirs(folder, exist_ok=True)
    for t in range(sessions):
        record = {"session": t, "seen_classes": 2 * (t + 1), "continuum": 20,
                  "per_task": {p: [a + shift for a in rows[t]] for p, (rows, _) in TABLES.items()},
                  "args": {"dataset": "digits", "num_class": 6, "class_per_task": 2, "num_task": 3,
                           "variant": "paper", "seed": seed, "lr": 0.1, "checkpoint": folder,
                           **args}}
        record.update({f"acc_{p}": seen[t] + shift for p, (_, seen) in TABLES.items()})
        if continuum:
            record["acc_task_agnostic_by_continuum"] = {str(p): 40.0 + p + shift for p in SIZES}
        if loss:  # session t: 4 epochs, loss (t + 1) + epoch / 10 + shift / 100
            record["train_loss_per_epoch"] = [t + 1 + e / 10 + shift / 100 for e in range(4)]
        with open(os.path.join(folder, f"session_{t}.json"), "w") as f:
            json.dump(record, f)
    return folder


def two_settings(tmp_path, **kw):
    """Seeds 0, 1, 2 of lr 0.1 (final 60, 70, 80) and of lr 0.01 (final 51, 61, 71)."""
    a = [write_seed(str(tmp_path / f"lr1_s{s}"), s, shift, **kw)
         for s, shift in zip(range(3), (-1, 9, 19))]
    b = [write_seed(str(tmp_path / f"lr01_s{s}"), s, shift, lr=0.01, **kw)
         for s, shift in zip(range(3), (-10, 0, 10))]
    return a, b


def row(table, group, protocol="task_agnostic"):
    return table[(table.group == group) & (table.protocol == protocol)].iloc[0]


def test_spread_known_answers():
    s = metrics.spread([60.0, 70.0, 80.0])
    assert s["mean"] == 70.0 and s["sd"] == pytest.approx(10.0)
    assert s["ci95_halfwidth"] == pytest.approx(T_975_2 * 10 / math.sqrt(3), abs=1e-5)
    assert s["ci95_halfwidth"] == pytest.approx(24.8414, abs=1e-4)
    two = metrics.spread([1.0, 3.0])  # t(0.975, 1) = 12.7062: sd √2, half-width 12.7062·√2/√2
    assert two["sd"] == pytest.approx(math.sqrt(2)) and two["ci95_halfwidth"] == pytest.approx(
        12.7062, abs=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one seed is a normal case, not a degrees-of-freedom warning
        one = metrics.spread([55.0])
    assert one["mean"] == 55.0 and math.isnan(one["sd"]) and math.isnan(one["ci95_halfwidth"])


def test_pooled_numbers_labels_and_csv(tmp_path):
    a, b = two_settings(tmp_path)
    out = tmp_path / "out"
    table = tables.pooled_report(a + b, str(out))
    assert list(dict.fromkeys(table.group)) == ["lr=0.1", "lr=0.01"]
    top = row(table, "lr=0.1")
    assert (top.n, top.seeds, top.sessions) == (3, "0 1 2", 3)
    assert top.final_acc_mean == pytest.approx(70.0) and top.final_acc_sd == pytest.approx(10.0)
    assert top.final_acc_ci95_halfwidth == pytest.approx(24.8414, abs=1e-4)
    assert top.avg_incremental_acc_mean == pytest.approx((90 + 75 + 61) / 3 + 9)
    assert top.avg_incremental_acc_sd == pytest.approx(10.0)
    assert top.avg_forgetting_mean == pytest.approx(12.5) and top.avg_forgetting_sd == 0.0
    assert top.bwt_mean == pytest.approx(-12.5) and top.bwt_ci95_halfwidth == 0.0
    assert (top.acc_after_0_mean, top.acc_after_0_sd) == (pytest.approx(99.0), pytest.approx(10.0))
    low = row(table, "lr=0.01", "per_sample")
    assert low.final_acc_mean == pytest.approx(30.0) and low.final_acc_sd == pytest.approx(10.0)
    assert low.arg_lr == 0.01 and row(table, "lr=0.1").runs == ";".join(map(os.path.normpath, a))
    saved = pd.read_csv(out / "report.csv")
    metric_columns = [f"{m}_{s}" for m in metrics.METRICS for s in ("mean", "sd", "ci95_halfwidth")]
    sessions = [f"acc_after_{t}_{s}" for t in range(3) for s in ("mean", "sd")]
    assert list(saved.columns) == (["group", "protocol", "n", "seeds", "sessions", "arg_lr"] +
                                   metric_columns + sessions + ["runs"])
    assert len(saved) == 8 and saved.final_acc_ci95_halfwidth[0] == pytest.approx(24.8414)
    md = (out / "report.md").read_text()
    assert "| `lr=0.1` | task_agnostic | 3 | 3 | 70.00 ± 10.00 | ± 24.84 |" in md
    assert "n = 3 (seeds 0, 1, 2)" in md and "Student's t" in md
    assert f"| `{os.path.normpath(a[2])}` | `lr=0.1` | 2 | 3 | 80.00 |" in md  # the runs table
    assert sorted(os.listdir(out)) == ["accuracy.png", "report.csv", "report.md"]


def test_grouping_ignores_seed_and_where_a_run_ran(tmp_path):
    runs = [write_seed(str(tmp_path / "x_s0"), 0),
            write_seed(str(tmp_path / "x_s1"), 1, savepoint="elsewhere", data_path="/d",
                       device="cuda:1", num_workers=8)]
    groups = report_runs.group_runs(report_runs.load_runs(runs))
    assert len(groups) == 1 and len(groups[0].runs) == 2
    assert groups[0].label == str(tmp_path / "x_s")  # nothing differs: the folders' common part
    same_seeds_other_lr = runs + [write_seed(str(tmp_path / "y_s0"), 0, lr=0.5),
                                  write_seed(str(tmp_path / "y_s1"), 1, lr=0.5)]
    groups = report_runs.group_runs(report_runs.load_runs(same_seeds_other_lr))
    assert [(g.label, len(g.runs)) for g in groups] == [("lr=0.1", 2), ("lr=0.5", 2)]
    assert groups[1].differing == {"lr": 0.5}


def test_one_change_at_a_time_is_labelled_by_its_change(tmp_path):
    """A study that changes one field at a time: each group is named by its change alone."""
    base = dict(r=1, beta=0.5)
    runs = [write_seed(str(tmp_path / f"b{s}"), s, **base) for s in range(2)]
    runs += [write_seed(str(tmp_path / f"r{s}"), s, **{**base, "r": 2}) for s in range(2)]
    runs += [write_seed(str(tmp_path / f"e{s}"), s, **{**base, "beta": 1.0}) for s in range(2)]
    labels = [g.label for g in report_runs.group_runs(report_runs.load_runs(runs))]
    assert labels == ["r=1, beta=0.5", "r=2", "beta=1.0"]


def test_label_names_the_variant_not_its_switches(tmp_path):
    paper = dict(task_start="base", meta_target="mean", r=1)
    official = dict(variant="official", task_start="previous", meta_target="last", r=2)
    runs = [write_seed(str(tmp_path / f"p{s}"), s, **paper) for s in range(2)]
    runs += [write_seed(str(tmp_path / f"o{s}"), s, **official) for s in range(2)]
    # a switch set against its variant is named
    runs += [write_seed(str(tmp_path / f"q{s}"), s, **{**paper, "task_start": "previous"})
             for s in range(2)]
    labels = [g.label for g in report_runs.group_runs(report_runs.load_runs(runs))]
    # each group by where it departs from the usual setting; the usual one names every field
    assert labels == ["variant=paper, task_start=base, r=1", "variant=official, r=2",
                      "task_start=previous"]
    two = [g.label for g in report_runs.group_runs(report_runs.load_runs(runs[:4]))]
    assert two == ["variant=paper, r=1", "variant=official, r=2"]


def test_group_of_one_among_pooled_groups(tmp_path):
    a, b = two_settings(tmp_path)
    out = tmp_path / "out"
    table = tables.pooled_report(a + b[:1], str(out))
    one = row(table, "lr=0.01")
    assert one.n == 1 and one.final_acc_mean == 51.0 and one.seeds == "0"
    assert math.isnan(one.final_acc_sd) and math.isnan(one.final_acc_ci95_halfwidth)
    assert "| `lr=0.01` | task_agnostic | 1 | 3 | 51.00 | – | " in (out / "report.md").read_text()


def test_single_runs_are_reported_as_today(tmp_path):
    runs = [write_seed(str(tmp_path / "a"), 0), write_seed(str(tmp_path / "b"), 0, lr=0.5)]
    table = tables.pooled_report(runs, str(tmp_path / "pooled"))
    assert table.n.tolist() == [1] * 8 and table.final_acc_sd.isna().all()
    today = tables.write_report(report_runs.load_runs(runs), str(tmp_path / "today"))
    for name in ("report.csv", "report.md"):
        assert (tmp_path / "pooled" / name).read_text() == (tmp_path / "today" / name).read_text()
    assert "| run | protocol | sessions |" in (tmp_path / "pooled" / "report.md").read_text()
    assert list(today.columns[:3]) == ["run", "protocol", "sessions"]
    main = today[today.protocol == "task_agnostic"].iloc[0]  # what utils/session.py reads
    assert (main.final_acc, main.avg_forgetting) == (61.0, 12.5)


def test_reruns_of_one_seed_stay_apart(tmp_path):
    runs = [write_run(str(tmp_path / "a")), write_run(str(tmp_path / "b"))]  # no seed: reruns
    groups = report_runs.group_runs(report_runs.load_runs(runs))
    assert [len(g.runs) for g in groups] == [1, 1]


def test_unequal_sessions_pool_the_common_ones(tmp_path):
    runs = [write_seed(str(tmp_path / "s0"), 0, -1), write_seed(str(tmp_path / "s1"), 1, 9),
            write_seed(str(tmp_path / "s2"), 2, 19, sessions=2),
            write_seed(str(tmp_path / "t0"), 0, lr=0.5), write_seed(str(tmp_path / "t1"), 1, lr=0.5)]
    out = tmp_path / "out"
    table = tables.pooled_report(runs, str(out))
    top = row(table, "lr=0.1")
    assert top.sessions == 2 and top.n == 3
    assert top.final_acc_mean == pytest.approx(75 + 9)  # session 1: 74, 84, 94
    assert top.avg_incremental_acc_mean == pytest.approx((90 + 75) / 2 + 9)
    assert math.isnan(top.acc_after_2_mean) and row(table, "lr=0.5").sessions == 3
    md = (out / "report.md").read_text()
    assert ("Its runs finished 3, 3, 2 sessions: pooled over sessions 0–1, the ones all of them "
            "finished.") in md
    assert md.count("Its runs finished") == 1 and "2 of 3 sessions; n = 3" in md


def test_continuum_table_and_plot(tmp_path):
    a, b = two_settings(tmp_path, continuum=True)
    out = tmp_path / "out"
    table = tables.pooled_report(a + b, str(out))
    top = row(table, "lr=0.1")
    assert top.final_acc_continuum_5_mean == pytest.approx(45 + 9)
    assert top.final_acc_continuum_5_sd == pytest.approx(10.0)
    assert math.isnan(row(table, "lr=0.1", "base").final_acc_continuum_5_mean)
    columns = list(pd.read_csv(out / "report.csv").columns)
    assert [c for c in columns if "continuum" in c] == [
        f"final_acc_continuum_{p}_{s}" for p in SIZES for s in ("mean", "sd")]
    md = (out / "report.md").read_text()
    assert "| group | n | p = 1 | p = 2 | p = 5 | p = 10 | p = 20 | p = 50 |" in md
    assert "| `lr=0.1` | 3 | 50.00 ± 10.00 | 51.00 ± 10.00 |" in md and "(continuum.png)" in md
    with Image.open(out / "continuum.png") as image:
        assert image.format == "PNG" and image.size[0] > 400
        image.verify()
    series = [(g.label, metrics.pooled_continuum([r for _, r in g.runs]))
              for g in report_runs.group_runs(report_runs.load_runs(a + b))]
    ax = plots.continuum_figure(series, pooled=True).axes[0]
    assert ax.get_xscale() == "log" and len(ax.collections) == 2  # one ±sd band a group
    assert list(ax.get_lines()[0].get_xdata()) == SIZES
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([40 + p + 9 for p in SIZES])


def test_continuum_per_run(tmp_path):
    run = write_seed(str(tmp_path / "r"), 0, continuum=True)
    table = tables.write_report(report_runs.load_runs([run]), run)
    assert table.loc[0, "final_acc_continuum_50"] == 90.0
    assert math.isnan(table.loc[1, "final_acc_continuum_50"])
    with open(os.path.join(run, "report.md")) as f:
        md = f.read()
    assert "| run | p = 1 | p = 2 |" in md and f"| `{run}` | 41.00 | 42.00 |" in md
    assert os.path.isfile(os.path.join(run, "continuum.png"))
    assert not os.path.exists(os.path.join(run, "loss.png"))


def test_loss_curve_and_plot(tmp_path):
    a, b = two_settings(tmp_path, loss=True)
    mean, sd, starts = metrics.pooled_loss([report_runs.load_run(f) for f in a])
    assert starts == [0, 4, 8] and len(mean) == 12
    assert mean[5] == pytest.approx(2 + 0.1 + 0.09) and sd[5] == pytest.approx(0.1)
    out = tmp_path / "out"
    tables.pooled_report(a + b, str(out))
    with Image.open(out / "loss.png") as image:
        assert image.format == "PNG"
        image.verify()
    assert "![training loss against the epoch](loss.png)" in (out / "report.md").read_text()
    ax = plots.loss_figure([("a", (mean, sd, starts))], pooled=True).axes[0]
    boundaries = [line.get_xdata()[0] for line in ax.get_lines()[1:]]
    assert boundaries == [4.5, 8.5] and len(ax.collections) == 1
    one = metrics.pooled_loss([report_runs.load_run(a[0])])
    assert list(one[0][:5]) == pytest.approx([0.99, 1.09, 1.19, 1.29, 1.99])
    assert all(map(math.isnan, one[1]))  # one run: no spread


def test_pooled_plot_draws_each_group_with_a_band(tmp_path):
    runs = [write_seed(str(tmp_path / f"c{s}"), s, 8 * s, dataset="cifar100", num_class=100,
                       class_per_task=10) for s in range(2)]
    runs += [write_seed(str(tmp_path / "d0"), 0, lr=0.5)]
    groups = report_runs.group_runs(report_runs.load_runs(runs))
    fig = plots.pooled_figure(groups, tables.pooled_table(groups))
    axes = fig.axes
    assert len(axes) == 4 and "continuum of 20" in axes[0].get_title()
    labels = [line.get_label() for line in axes[0].get_lines()]
    assert labels[0].endswith("(n = 2)") and labels[1].endswith("(n = 1)")
    assert any(label.startswith("iTAML, the paper") for label in labels)
    assert all(len(ax.collections) == 1 for ax in axes)  # a band for n = 2 only
    assert list(axes[0].get_lines()[0].get_ydata()) == pytest.approx([94.0, 79.0, 65.0])
    assert "± 1 standard deviation" in fig._suptitle.get_text()


def test_cli_prints_the_pooled_table(tmp_path, capsys):
    a, b = two_settings(tmp_path)
    report_main(a + b + ["--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "final (mean ± sd)" in printed and "70.00 ± 10.00" in printed and "± 24.84" in printed
    assert printed.count("lr=0.01") == 4 and "wrote report.csv, report.md and accuracy.png" in printed


@pytest.mark.parametrize("change,pattern", [
    (lambda r: r.update(acc_task_agnostic_by_continuum={"one": 50.0}),
     r"session_2.json is corrupt \(ValueError: acc_task_agnostic_by_continuum is not a mapping"),
    (lambda r: r.update(train_loss_per_epoch=[1.0, "nan"]),
     r"session_2.json is corrupt \(ValueError: train_loss_per_epoch is not a list of numbers"),
    (lambda r: r.update(args=["lr", 0.1]), r"session_2.json is corrupt \(ValueError: its args"),
])
def test_corrupt_measurements_are_named(tmp_path, change, pattern):
    folder = write_seed(str(tmp_path / "run"), 0)
    path = os.path.join(folder, "session_2.json")
    with open(path) as f:
        record = json.load(f)
    change(record)
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ConfigError, match=pattern):
        report_runs.load_run(folder)


def test_bad_folder_lists(tmp_path, capsys):
    run = write_seed(str(tmp_path / "a"), 0)
    with pytest.raises(ConfigError, match=r"a/ is given twice \(also as .*a\); give each run once"):
        report_runs.load_runs([run, run + "/"])
    with pytest.raises(ConfigError, match="no run folder given"):
        tables.pooled_report([], str(tmp_path / "out"))
    again = [run, write_seed(str(tmp_path / "b"), 1), write_seed(str(tmp_path / "c"), 0)]
    with pytest.raises(ConfigError, match=r"a and .*c are the same setting with the same seed 0; "
                                          "give only one of them"):
        report_runs.group_runs(report_runs.load_runs(again))
    with pytest.raises(SystemExit) as done:
        report_main(again)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "same seed 0" in err
