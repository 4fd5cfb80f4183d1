"""Metrics on hand-written session files with known answers, the report CLI, the plot and its errors."""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.support.fake_runs import write_run
from utils.errors import ConfigError
from utils.report import metrics, plots
from utils.report import runs as report_runs
from utils.report import tables
from utils.report.__main__ import main as report_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# write_run writes the accuracies of tests/support/fake_runs.py's TABLES; the answers below are
# worked out from them.


def test_accuracy_matrix_and_metrics_known_answers(tmp_path):
    records = report_runs.load_run(write_run(str(tmp_path / "run")))
    a = metrics.accuracy_matrix(records, "task_agnostic")
    assert list(a.columns) == ["T0", "T1", "T2"]
    assert a.iloc[2].tolist() == [60.0, 75.0, 50.0] and a.iloc[1, 1] == 70.0
    assert math.isnan(a.iloc[0, 1]) and math.isnan(a.iloc[1, 2])  # tasks not yet arrived
    m = metrics.protocol_metrics(records, "task_agnostic")
    assert m["final_acc"] == 61.0
    assert m["avg_incremental_acc"] == pytest.approx((90 + 75 + 61) / 3)
    # forgetting: task 0 max(90, 80) − 60 = 30, task 1 max(70) − 75 = −5 → 12.5
    assert m["avg_forgetting"] == pytest.approx(12.5)
    # backward transfer: (60 − 90 + 75 − 70) / 2
    assert m["bwt"] == pytest.approx(-12.5)
    base = metrics.protocol_metrics(records, "base")  # forgetting takes the best earlier session
    assert base["avg_forgetting"] == pytest.approx(((50 - 20) + (30 - 30)) / 2)
    assert base["bwt"] == pytest.approx(((20 - 50) + (30 - 30)) / 2)
    aware = metrics.protocol_metrics(records, "task_aware")
    assert aware["avg_forgetting"] == 0.0 and aware["bwt"] == 0.0


def test_one_session_has_no_forgetting(tmp_path):
    records = report_runs.load_run(write_run(str(tmp_path / "run"), sessions=1))
    m = metrics.protocol_metrics(records, "task_agnostic")
    assert m["final_acc"] == 90.0 and m["avg_incremental_acc"] == 90.0
    assert math.isnan(m["avg_forgetting"]) and math.isnan(m["bwt"])


def test_run_metrics_table(tmp_path):
    table = metrics.run_metrics(report_runs.load_run(write_run(str(tmp_path / "run"))))
    assert table.protocol.tolist() == ["task_agnostic", "per_sample", "task_aware", "base"]
    row = table.set_index("protocol").loc["per_sample"]
    assert row.sessions == 3 and row.final_acc == 30.0
    assert [row.acc_after_0, row.acc_after_1, row.acc_after_2] == [50.0, 35.0, 30.0]


def test_cli_on_two_runs_writes_csv_markdown_and_png(tmp_path):
    a = write_run(str(tmp_path / "a"))
    b = write_run(str(tmp_path / "b"), sessions=2)
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "utils.report", a, b, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "avg forgetting" in done.stdout and done.stdout.count("task_agnostic") == 2
    table = pd.read_csv(out / "report.csv")
    assert len(table) == 8 and set(table.run) == {os.path.normpath(a), os.path.normpath(b)}
    first = table[(table.run == os.path.normpath(a)) & (table.protocol == "task_agnostic")].iloc[0]
    assert first.avg_forgetting == pytest.approx(12.5) and first.final_acc == 61.0
    md = (out / "report.md").read_text()
    assert "| after session | T0 | T1 | T2 |" in md and "![accuracy" in md
    from PIL import Image
    with Image.open(out / "accuracy.png") as image:
        assert image.format == "PNG" and image.size[0] > 400
        image.verify()


def test_single_run_report_goes_into_its_folder(tmp_path):
    run = write_run(str(tmp_path / "run"))
    report_main([run])
    assert sorted(f for f in os.listdir(run) if f.startswith(("report", "accuracy"))) == [
        "accuracy.png", "report.csv", "report.md"]


def test_paper_curve_is_overlaid_for_a_known_setting(tmp_path):
    records = report_runs.load_run(write_run(str(tmp_path / "c"), dataset="cifar100", num_class=100,
                                        class_per_task=10))
    curve = plots.paper_curve(records)
    assert curve["accuracy"][-1] == 77.8 and len(curve["accuracy"]) == 10
    lines = plots.figure([("c", records)], "c").axes[0].get_lines()
    paper = [line for line in lines if line.get_label().startswith("iTAML, the paper")]
    assert len(paper) == 1 and list(paper[0].get_xdata()) == list(range(10, 101, 10))
    assert len(lines) == 5  # four protocols and the paper
    md = tables.markdown([("c", records)], tables.report_table([("c", records)]))
    assert f"| 10 | 77.80 | {sum(curve['accuracy']) / 10:.2f} |" in md
    digits = report_runs.load_run(write_run(str(tmp_path / "d")))
    assert plots.paper_curve(digits) is None
    assert len(plots.figure([("d", digits)], "d").axes[0].get_lines()) == 4


def test_paper_curves_file_is_consistent():
    data = json.load(open(plots.PAPER_CURVES))
    assert "arXiv:2003.11652" in data["citation"]
    for curve in data["curves"]:
        assert len(curve["accuracy"]) == curve["num_class"] // curve["class_per_task"]


@pytest.mark.parametrize("setup,pattern", [
    (lambda p: os.makedirs(p), r"holds no session_<t>.json; give the args.checkpoint folder"),
    (lambda p: None, r"is not a folder; give the args.checkpoint folder of a run"),
    (lambda p: (write_run(p), os.remove(os.path.join(p, "session_1.json"))),
     r"session_1.json is missing while later sessions exist"),
    (lambda p: (write_run(p), open(os.path.join(p, "session_2.json"), "w").write("{")),
     r"session_2.json is corrupt \(JSONDecodeError"),
])
def test_clear_errors(tmp_path, setup, pattern):
    folder = str(tmp_path / "run")
    setup(folder)
    with pytest.raises(ConfigError, match=pattern):
        report_runs.load_run(folder)


def test_cli_error_is_one_line(tmp_path):
    os.makedirs(tmp_path / "empty")
    done = subprocess.run([sys.executable, "-m", "utils.report", str(tmp_path / "empty")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "holds no session_<t>.json" in done.stderr
