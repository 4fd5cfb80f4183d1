#!/usr/bin/env bash
# The reproduction study of docs/study.md: ten seeds of each setting on the digits demo, then one pooled report.
# Rerunning it skips every finished run; a killed study loses only the runs in flight.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/study}
JOBS=${JOBS:-2}
sweep() { python3 -m utils.run.sweep train_digits.py --seeds 0-9 --jobs "$JOBS" --out "$OUT" "$@"; }
sweep variant=paper,official                 # the two presets
sweep task_start=previous                    # each of the release's training deviations alone
sweep meta_target=last
sweep task_optimizer=shared
sweep r=1,2,4                                # inner steps per task
sweep beta=0.5,1,2                           # decay of η
sweep memory=200,400,800                     # exemplars kept
python3 -m utils.report "$OUT"/*seed=* --out "$OUT/report"
