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
# An ablation against the same store: the joint stage without and with the SAM loss, side by side.
python -m student.sweep --sweep student/configs/sweeps/tiny_lambda.yaml out/sweeps/tiny_lambda
python -m student.compare out/sweeps/tiny_lambda
# A transfer set retrieved from the store's crops for a small target set (the classification images),
# and a short probe run on it alone.
python -m pipeline.transfer_set jobs/sample.yaml --query out/sample/eval/classify --per-query 3 --name classify --held-out 0.2
python student/train.py --config student/configs/tiny.yaml --set data.clip.subset=classify \
  --set output_dir=out/train-subset --set "stages=[{name: probe, epochs: 2, lr: 0.002, warmup_steps: 2}]"
# Evaluate the student it trained on the sample evaluation sets, then draw what it and the store hold.
EXPORT=out/train/export
# The suite: the student's CLIP head, its SAM-head refinement and the CLIP teacher in one table.
python -m student.evaluate suite --suite student/configs/eval/sample.yaml --export "$EXPORT" \
  --job jobs/sample.yaml --out out/eval/suite
python -m student.evaluate sam-agreement --export "$EXPORT"
python -m student.visualize --export "$EXPORT" --data out/sample/eval/voc --text sample --out out/pictures/semseg
python -m student.inspect_store out/store --out out/pictures/store
echo "metrics: out/eval/suite/suite.md (the table), out/eval/*.json; pictures: out/pictures/semseg (student), out/pictures/store (cached targets);"
echo "sweep: out/sweeps/tiny_lambda/comparison.{md,csv,png}; curves: tensorboard --logdir out/train/tensorboard"
echo "transfer set: out/store/subsets/classify.{parquet,json,png} (the .png: each query beside the crops it retrieved)"
