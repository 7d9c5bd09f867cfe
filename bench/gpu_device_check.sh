#!/usr/bin/env bash
# One short device check on a GPU machine without network: the measured step times of the GPU study
# presets (bench/gpu_steps.py) and the per-step cost of LIFT+PLACE (bench/bench_losses.py).
#
# Run from the repository root, with the wheels the machine lacks (diffusers, torch-pruning) in .whl/
# and $OUT naming the folder for the results (default /tmp/gpu-check):
#
#     bash bench/gpu_device_check.sh
#
# It installs the wheels into /tmp/site (nothing else is touched), prints the device and the versions,
# and writes $OUT/log.txt, $OUT/gpu_steps.md, $OUT/gpu_steps.json (rewritten after every measurement,
# so a run cut short keeps what it measured) and $OUT/bench_losses.txt. Each step has its own time
# limit so that the whole check ends within about five minutes; its exit status is the worst of them.
# DEVICE, STEPS_ARGS and LOSSES_ARGS override the device and the two benchmarks' arguments (for a dry
# run of this script on a CPU: DEVICE=cpu STEPS_ARGS="--quick --presets smoke" LOSSES_ARGS="--repeats 1 --batch 1").
set -uo pipefail

OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
STEPS_ARGS=${STEPS_ARGS:-}
LOSSES_ARGS=${LOSSES_ARGS:---repeats 5}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
status=0

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG" || exit 2
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1

{
    echo "== device"
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "== versions"
    python3 - <<'EOF'
import importlib.metadata as md, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for dist in ("diffusers", "torch-pruning", "huggingface-hub", "safetensors", "accelerate", "numpy", "torchvision"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "MISSING")
import liftplace.training, liftplace.pruning, liftplace.sampling  # the import chain gpu_steps.py needs
print("liftplace imports from", liftplace.training.__file__)
EOF
} 2>&1 | tee -a "$LOG" || status=3

echo "== bench/gpu_steps.py" | tee -a "$LOG"
# shellcheck disable=SC2086 # the *_ARGS are word lists
timeout -k 10 230 python3 bench/gpu_steps.py --device "$DEVICE" $STEPS_ARGS --markdown "$OUT/gpu_steps.md" \
    --json "$OUT/gpu_steps.json" 2>&1 | tee -a "$LOG" || status=$?

echo "== bench/bench_losses.py" | tee -a "$LOG"
# shellcheck disable=SC2086
timeout -k 10 60 python3 bench/bench_losses.py --device "$DEVICE" --resolutions 64 $LOSSES_ARGS \
    2>&1 | tee "$OUT/bench_losses.txt" | tee -a "$LOG" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }

echo "== exit status $status" | tee -a "$LOG"
exit "$status"
