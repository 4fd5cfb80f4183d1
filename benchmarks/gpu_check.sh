#!/usr/bin/env bash
# The GPU path checked and measured in one command, for a fresh GPU machine: under 8 minutes, since
# every step has its own time limit (475 s together) and the check goes on after a failed one.
#
#     bash benchmarks/gpu_check.sh OUTDIR
#
# It installs nothing: torch (>= 2.4), torchvision, numpy, scipy, pandas, scikit-learn, matplotlib,
# Pillow, tqdm and pytest must be importable, else it stops at once naming what is missing. OUTDIR
# receives 8 files: log.txt (every step's output), test_cuda.xml, bench_fp32.json, bench_amp.json,
# bench_compile.json, e2e.json, summary.md and summary.json (benchmarks/gpu_summary.py: the device,
# the tests, every target against its measurement).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}   # fake data and the runs' folders: not brought back
rm -rf "$WORK/runs"
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run, log, and say how it ended
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s): $*" | tee -a "$LOG"
    local began=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$LOG"
}

python3 - >"$OUT/device.json" 2>>"$LOG" <<'EOF' || { tail -1 "$LOG"; echo "gpu_check: stopped before any step, for the reason above" | tee -a "$LOG"; exit 2; }
import importlib, json, sys
missing = [m for m in ("torch", "torchvision", "numpy", "scipy", "pandas", "sklearn", "matplotlib",
                       "PIL", "tqdm", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.stderr.write("missing packages: " + ", ".join(missing) + " (carry them as wheels)\n")
    sys.exit(1)
import torch
if not torch.cuda.is_available():
    sys.stderr.write("no CUDA GPU is visible to torch " + torch.__version__ + "\n")
    sys.exit(1)
name = torch.cuda.get_device_name()
print(json.dumps({"line": f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                          f"cuDNN {torch.backends.cudnn.version()}, Python {sys.version.split()[0]}",
                  "gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda}))
EOF
nvidia-smi >>"$LOG" 2>&1
cat "$OUT/device.json" | tee -a "$LOG"

step test_cuda 170 python3 -m pytest -v -rs tests/test_cuda.py --junitxml "$OUT/test_cuda.xml"
# fp32: both presets (the batched step, a target, is the paper preset's); amp and compile: the
# shipped preset (official) alone, to stay inside the limits
step bench_fp32 90 python3 benchmarks/bench_step.py --device cuda --json "$OUT/bench_fp32.json"
step bench_amp 60 python3 benchmarks/bench_step.py --device cuda --amp --presets official \
    --json "$OUT/bench_amp.json"
step bench_compile 90 python3 benchmarks/bench_step.py --device cuda --compile --reps 2 \
    --presets official --json "$OUT/bench_compile.json"
step e2e_loader 40 python3 benchmarks/e2e_cifar.py --data "$WORK/data" --runs "$WORK/runs" \
    --json "$OUT/e2e.json" num_workers=8
step e2e_gpu_data 25 python3 benchmarks/e2e_cifar.py --data "$WORK/data" --runs "$WORK/runs" \
    --json "$OUT/e2e.json" --gpu-data
python3 benchmarks/gpu_summary.py "$OUT" | tee -a "$LOG"
rm -f "$OUT/device.json"   # now in summary.json: OUTDIR keeps 8 files, all the device tool returns
