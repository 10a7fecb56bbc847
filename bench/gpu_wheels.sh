#!/usr/bin/env bash
# Run here, before a device session: downloads into .whl/ (git-ignored) the Python 3.12 x86-64 wheels
# of what bench/gpu_student.py and bench/gpu_teachers.py import and the device image lacks (its
# package list: the device tool's KINDS.md), at the versions this .venv tests with.
# Then: the device tool's `run` with carry [".whl"] and command `bash bench/gpu_run.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
missing=(braceexpand donfig ftfy google-crc32c numcodecs open_clip_torch pycocotools segment-anything wcwidth
  webdataset zarr)
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for name in "${missing[@]}"; do
  python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$name==$(python -c "from importlib.metadata import version; print(version('$name'))")"
done
du -sh .whl
