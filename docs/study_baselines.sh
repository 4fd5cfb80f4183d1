#!/usr/bin/env bash
# The baselines study of docs/study.md: on the MLP digits (train_digits.py) and the BatchNorm digits32
# (train_digits_cnn.py), seeds 0-4, iTAML as shipped and in the other variant, experience replay with
# each loss, fine-tuning and joint training (on the MLP with each loss too), all evaluated by the same
# four protocols; one pooled report a data set, then the study's tables. Rerunning it skips every
# finished run.
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
  if [ "$script" = train_digits ]; then  # the bounds under iTAML's loss too (on the MLP: seconds)
    python3 -m utils.run.sweep "$script.py" --seeds "$SEEDS" --jobs "$JOBS" --out "$out" \
      method=finetune,joint er_loss=task_bce
  fi
  python3 -m utils.report "$out"/*,seed=* --out "$out/report"
done
# On the BatchNorm network the single update moves the baselines' models far more than iTAML's: the
# same saved models evaluated again without it (adapt_epochs=0); a finished evaluation is skipped.
for run in "$OUT"/train_digits_cnn/{default,method=er,method=er\,er_loss=task_bce,method=joint}\,seed=*; do
  python3 -m utils.run.evaluate "$run" adapt_epochs=0 --out "$OUT/train_digits_cnn_noupdate/${run##*/}"
done
# The tables of docs/study.md: final accuracies of each protocol, the average incremental accuracy and
# the average forgetting (task-agnostic), mean ± sd [95% CI half-width] over the seeds, and what the
# continuum buys (task-agnostic minus per sample); then each method's continuum curve.
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
        if len(records) != records[-1]["args"]["num_task"]:
            sys.exit(f"{run} has {len(records)} of {records[-1]['args']['num_task']} sessions: "
                     "rerun this script to finish it")
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
    sizes = sorted({int(p) for runs in groups.values() for r in runs
                    for p in r[-1]["acc_task_agnostic_by_continuum"]})
    print(f"\n{script}.py: final task-agnostic accuracy against the continuum size p, mean ± sd\n")
    print("| method | " + " | ".join(f"p = {p}" for p in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for k in ORDER:
        runs = groups.get(k, [])
        if runs:
            by_p = [r[-1]["acc_task_agnostic_by_continuum"] for r in runs]
            print(f"| {name(k)} | " + " | ".join(
                "{mean:.1f} ± {sd:.1f}".format(**spread([b[str(p)] for b in by_p])) for p in sizes) + " |")
print("\ntrain_digits_cnn.py: final accuracy with the single update (as shipped) and without it "
      "(adapt_epochs=0), the same models, mean ± sd\n")
print("| method | task-aware | without | task-agnostic (p = 20) | without | per sample | without |")
print("|---|---|---|---|---|---|---|")
for k in ORDER:
    found = [r for r in sorted(glob.glob(os.path.join(out, "train_digits_cnn", "*,seed=*")))
             if kind(load_run(r)) == k]
    if not found or not all(os.path.isdir(os.path.join(out, "train_digits_cnn_noupdate",
                                                       os.path.basename(r))) for r in found):
        continue
    pairs = [(load_run(r)[-1], load_run(os.path.join(out, "train_digits_cnn_noupdate",
                                                     os.path.basename(r)))[-1]) for r in found]
    cells = ["{mean:.1f} ± {sd:.1f}".format(**spread([p[i][key] for p in pairs]))
             for key in ("acc_task_aware", "acc_task_agnostic", "acc_per_sample") for i in (0, 1)]
    print(f"| {name(k)} | " + " | ".join(cells) + " |")
PY
