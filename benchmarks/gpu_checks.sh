#!/usr/bin/env bash
# The issue-3 GPU measurements in one call of the device tool (under 10 minutes on an H100).
# Needs only torch, torchvision and numpy; writes each section's rows as JSON under OUT.
#   OUT=/some/dir bash benchmarks/gpu_checks.sh
# Each command has its own time limit so one slow section cannot take the rest with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
run() {  # run NAME SECONDS ARGS...: one benchmark call, its output kept whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" python3 benchmarks/kd_step.py --device cuda --out "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v Warning | tail -15
  echo "exit ${PIPESTATUS[0]}"
}
# K students per step: separate networks, one grouped network, K streams in one graph
echo "== grouped (limit 75s)"
timeout 75 python3 benchmarks/grouped_students.py --device cuda 2>&1 | tee "$OUT/grouped.log" | grep -v Warning
echo "exit ${PIPESTATUS[0]}"
# step speed: seed loop, online and table in eager/graph/compile, packed eager groups, table build
run step 220 --sections seed,online,table,packed,build --pack 2,4,8
# a whole 30-epoch trial, cold and warm, graph-captured (compile adds ~30 s cold)
run trial 110 --sections trial
# trials per GPU-hour: 8 trials of x0.5 (10 epochs), one process vs 2 and 4 processes sharing the GPU
run study 160 --sections study --student-width 0.5 --study-trials 8 --trial-epochs 10 --jobs 1,2,4 \
    --packing processes --trial-accel graph
