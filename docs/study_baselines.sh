#!/usr/bin/env bash
# The baselines study of docs/study.md: on the MLP digits (train_digits.py) and the BatchNorm digits32
# (train_digits_cnn.py), seeds 0-4, iTAML as shipped and in the other variant, experience replay with
# each loss, fine-tuning and joint training, all evaluated by the same four protocols; one pooled
# report a data set, then the study's tables. Rerunning it skips every finished run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/study_baselines}
JOBS=${JOBS:-2}
SEEDS=${SEEDS:-0-4}
for script in train_digits train_digits_cnn; do
  out="$OUT/$script"
  python3 -m utils.run.sweep "$script.py" --seeds "$SEEDS" --jobs "$JOBS" --out "$out" \
    variant=paper,official
  python3 -m utils.run.sweep "$script.py" --seeds "$SEEDS" --jobs "$JOBS" --out "$out" \
    method=er er_loss=ce,task_bce
  python3 -m utils.run.sweep "$script.py" --seeds "$SEEDS" --jobs "$JOBS" --out "$out" \
    method=finetune,joint
  python3 -m utils.run.sweep "$script.py" --seeds "$SEEDS" --jobs "$JOBS" --out "$out" \
    method=finetune,joint er_loss=task_bce
  python3 -m utils.report "$out"/*,seed=* --out "$out/report"
done
# The tables of docs/study.md: final accuracies of each protocol, the average incremental accuracy and
# the average forgetting (task-agnostic), mean ± sd [95% CI half-width] over the seeds, and what the
# continuum buys (task-agnostic minus per sample).
python3 - "$OUT" <<'PY'
import glob, os, sys
from utils.report.metrics import protocol_metrics, spread
from utils.report.runs import load_run
out = sys.argv[1]
ORDER = [("itaml", "paper", None), ("itaml", "official", None), ("er", None, "ce"),
         ("er", None, "task_bce"), ("finetune", None, "ce"), ("finetune", None, "task_bce"),
         ("joint", None, "ce"), ("joint", None, "task_bce")]
def kind(records):
    a = records[-1]["args"]
    return (a["method"], a["variant"] if a["method"] == "itaml" else None,
            None if a["method"] == "itaml" else a["er_loss"])
def name(k):
    return f"iTAML, {k[1]}" if k[0] == "itaml" else f"{k[0]}, {k[2]}"
def cell(values):
    s = spread(values)
    return f"{s['mean']:.1f} ± {s['sd']:.1f} [{s['ci95_halfwidth']:.1f}]"
for script in ("train_digits", "train_digits_cnn"):
    groups = {}
    for run in sorted(glob.glob(os.path.join(out, script, "*,seed=*"))):
        records = load_run(run)
        groups.setdefault(kind(records), []).append(records)
    print(f"\n{script}.py: final session, mean ± sd [95% CI half-width] over {len(groups[ORDER[0]])} seeds\n")
    print("| method | task-agnostic (p = 20) | per sample | task-aware | avg incremental | "
          "forgetting | continuum buys |")
    print("|---|---|---|---|---|---|---|")
    for k in ORDER:
        runs = groups.get(k, [])
        if not runs:
            continue
        final = [cell([r[-1][key] for r in runs])
                 for key in ("acc_task_agnostic", "acc_per_sample", "acc_task_aware")]
        metrics = [protocol_metrics(r, "task_agnostic") for r in runs]
        gain = spread([r[-1]["acc_task_agnostic"] - r[-1]["acc_per_sample"] for r in runs])
        print(f"| {name(k)} | {' | '.join(final)} | "
              f"{cell([m['avg_incremental_acc'] for m in metrics])} | "
              f"{cell([m['avg_forgetting'] for m in metrics])} | +{gain['mean']:.1f} |")
PY
