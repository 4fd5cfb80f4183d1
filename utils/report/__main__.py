"""``python3 -m utils.report <checkpoint folder> [more folders] [--out DIR]``: metrics, tables and plots.

Reads the session records of one or more runs, prints every protocol's metrics and writes the report's
files (``utils/report/tables.py``). Runs whose args differ only in the seed and in where and how they
ran are seeds of one setting: they are pooled, each group's mean, standard deviation and 95%
confidence interval over its seeds (``utils/report/runs.py``). When every group holds one run the
report is the per-run one.
"""
import argparse
import sys

from utils.errors import ConfigError
from utils.report.runs import group_runs, load_runs
from utils.report.tables import format_metrics, format_pooled, report_table, write_groups


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m utils.report",
        description="Metrics, accuracy matrices and plots of one or more iTAML runs; the seeds of "
                    "one setting are pooled (mean, sd, 95% confidence interval).")
    parser.add_argument("folders", nargs="+", help="args.checkpoint folders of runs")
    parser.add_argument("--out", help="where to write report.csv, report.md and the plots "
                        "(default: the run's folder for one run, ./report for several)")
    options = parser.parse_args(argv)
    try:
        groups = group_runs(load_runs(options.folders))
    except ConfigError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    out = options.out or (groups[0].runs[0][0] if len(options.folders) == 1 else "report")
    table, written = write_groups(groups, out)
    if all(len(g.runs) == 1 for g in groups):
        print(format_metrics(report_table([g.runs[0] for g in groups])))
    else:
        print(format_pooled(table))
    print(f"wrote {', '.join(written[:-1])} and {written[-1]} to {out}")


if __name__ == "__main__":
    main()
