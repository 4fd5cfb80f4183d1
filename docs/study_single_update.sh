#!/usr/bin/env bash
# The README's single-update study: the BatchNorm digits demo (train_digits_cnn.py) trained with five
# seeds, then every run evaluated again on the same saved models with each remedy and with no update;
# one pooled report. Rerunning it skips every finished run and every finished evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/study_single_update}
JOBS=${JOBS:-2}
python3 -m utils.sweep train_digits_cnn.py --seeds 0-4 --jobs "$JOBS" --out "$OUT"
for run in "$OUT"/default,seed=*; do
  seed=${run##*,}                                            # seed=N
  for change in adapt_lr=1e-4 adapt_bn=reestimate adapt_epochs=0; do
    python3 -m utils.evaluate "$run" "$change" --out "$OUT/evaluated/$change,$seed"
  done
done
python3 -m utils.report "$OUT"/default,seed=* "$OUT"/evaluated/* --out "$OUT/report"
