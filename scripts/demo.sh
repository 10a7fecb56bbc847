#!/usr/bin/env bash
# The main job end to end on the built-in sample corpus, with tiny random-initialised teachers.
# Creates or reuses .venv; writes everything under out/ (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pipeline.sample_data out/sample
python -m pipeline.teachers.tiny out/teachers
python -m pipeline.plan jobs/sample.yaml
python -m storage_schemas out/store
