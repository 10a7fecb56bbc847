"""What a training run's folder (OUTPUT = `output_dir`) already holds, for reruns that cost nothing.

    status = run_status("out/train")            # "finished" | "partial" | "new"
    diff = config_difference("out/train", config_record(cfg))   # None, or "seed: 0 there, 1 now"

A run is finished when its export is written (`export/student.json`), partial when it has a
completed checkpoint, new otherwise. `config.yaml` is the config the run was started with
(student/train.py writes it), compared key by key; a folder with checkpoints or validations but no
config.yaml is from before runs recorded it, and counts as another config.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from student.config import NOT_TRAINING, RUN_CONFIG, default_value, flat_config

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # in each checkpoint: stage, steps, data position, scheduler
EXPORT_META = os.path.join("export", "student.json")
VALIDATION_FILE = "validation.jsonl"


def checkpoint_names(output_dir: str) -> list[str]:
    """Completed checkpoint folders (`step_N`; a `.tmp` one was cut short), oldest first."""
    root = os.path.join(output_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if d.startswith("step_") and not d.endswith(".tmp"))


def run_status(output_dir: str) -> str:
    if os.path.isfile(os.path.join(output_dir, EXPORT_META)):
        return "finished"
    return "partial" if checkpoint_names(output_dir) else "new"


def config_difference(output_dir: str, record: dict[str, Any]) -> str | None:
    """How the config of the run in `output_dir` differs from `record` (config_record form):
    None where they agree or the folder holds no run yet (no checkpoint, validation or export)."""
    path = os.path.join(output_dir, RUN_CONFIG)
    if run_status(output_dir) == "new" and not os.path.isfile(os.path.join(output_dir, VALIDATION_FILE)):
        return None  # nothing trained here yet (a start that stopped on bad input leaves config.yaml alone)
    if not os.path.isfile(path):
        return f"a run without {RUN_CONFIG} (from before runs recorded their config)"
    with open(path) as f:
        was = flat_config(yaml.safe_load(f) or {})
    now = flat_config(record)

    def value(config: dict[str, Any], k: str) -> Any:
        return config[k] if k in config else default_value(k)  # a key added since ran at its default

    # output_dir is where both are, however spelled (a relative path, a moved folder); the other
    # keys of NOT_TRAINING change how the run is watched, not what it trains.
    diff = sorted(k for k in set(was) | set(now) if value(was, k) != value(now, k) and k not in NOT_TRAINING)
    if not diff:
        return None
    k = diff[0]
    more = f" and {len(diff) - 1} more key(s)" if len(diff) > 1 else ""
    return f"{k}: {value(was, k)!r} there, {value(now, k)!r} now{more}"
