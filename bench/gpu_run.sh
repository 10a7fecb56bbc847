#!/usr/bin/env bash
# Run on a lent GPU (the device tool, carry [".whl"] from bench/gpu_wheels.sh): installs the carried
# wheels beside the image's PyTorch, then both GPU benchmarks, each under its own time limit so a
# hang in one still leaves the other's figures (both print each figure as it is measured); the
# logs land in $OUT. At most 9 of a command's 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python3 bench/gpu_student.py 2>&1 | tee "$OUT/gpu_student.log"
timeout 300 python3 bench/gpu_teachers.py --seconds 30 2>&1 | tee "$OUT/gpu_teachers.log"
