#!/usr/bin/env bash
# The main job end to end on the built-in sample corpus, with tiny random-initialised teachers.
# Creates or reuses .venv; writes everything under out/ (delete it to start over; a rerun skips
# what is already committed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"  # offline demo: no usage reporting
python -m pipeline.sample_data out/sample
python -m pipeline.teachers.tiny out/teachers
python -m pipeline.plan jobs/sample.yaml
python -m pipeline.materialize jobs/sample.yaml --report out/materialize-report.json
python -m pipeline.text_targets jobs/sample.yaml --name sample --classes jobs/sample_classes.txt
python -m storage_schemas out/store
python student/train.py --config student/configs/tiny.yaml
