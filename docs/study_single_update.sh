#!/usr/bin/env bash
# The single-update study of docs/study.md: the BatchNorm digits demo (train_digits_cnn.py) trained with five
# seeds, then every run evaluated again on the same saved models with each remedy and with no update;
# one pooled report. Rerunning it skips every finished run and every finished evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/study_single_update}
JOBS=${JOBS:-2}
python3 -m utils.run.sweep train_digits_cnn.py --seeds 0-4 --jobs "$JOBS" --out "$OUT"
for run in "$OUT"/default,seed=*; do
  seed=${run##*,}                                            # seed=N
  for change in adapt_lr=1e-4 adapt_bn=reestimate adapt_epochs=0; do
    python3 -m utils.run.evaluate "$run" "$change" --out "$OUT/evaluated/$change,$seed"
  done
done
python3 -m utils.report "$OUT"/default,seed=* "$OUT"/evaluated/* --out "$OUT/report"
# The table of docs/study.md: final accuracies, the mean task-aware accuracy over sessions 1-4 (those that
# adapt), and the worst task-aware accuracy of any task after any update, mean ± sd over the seeds.
python3 - "$OUT" <<'PY'
import glob, os, statistics, sys
from utils.report.runs import load_run
out = sys.argv[1]
groups = [("the release's update (default)", "default"), ("adapt_lr=1e-4", "evaluated/adapt_lr=1e-4"),
          ("adapt_bn=reestimate", "evaluated/adapt_bn=reestimate"),
          ("no update (adapt_epochs=0)", "evaluated/adapt_epochs=0")]
def pm(values):
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
print("| single update | task-aware | task-agnostic (p = 20) | per sample "
      "| task-aware, sessions 1–4 | worst task after an update |")
print("|---|---|---|---|---|---|")
for name, prefix in groups:
    records = [load_run(run) for run in sorted(glob.glob(os.path.join(out, prefix + ",seed=*")))]
    final = [pm([r[-1][key] for r in records])
             for key in ("acc_task_aware", "acc_task_agnostic", "acc_per_sample")]
    adapting = pm([statistics.mean(s["acc_task_aware"] for s in r[1:]) for r in records])
    worst = pm([min(min(s["per_task"]["task_aware"]) for s in r[1:]) for r in records])
    print(f"| {name} | {' | '.join(final)} | {adapting} | {worst} |")
PY
