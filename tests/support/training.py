"""Training runs as tests start them: student/train.py on the tiny configuration and a store.

args = train_args(store, out, tiny_sam, [PROBE % 9, JOINT % ("10.0", 3)], "log_batches=true")
run([sys.executable, "student/train.py", *args])
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.commands import REPO

TINY = str(REPO / "student" / "configs" / "tiny.yaml")
PROBE = "{name: probe, epochs: 20, lr: 0.002, warmup_steps: 5, max_steps: %d}"
# Joint at a learning rate high enough that 30 steps move the backbone visibly (the paper's 4e-6 on
# the backbone needs its 16 epochs of 41M images); the SAM head at 0.1x, as the paper's ratio.
JOINT = (
    "{name: joint, epochs: 20, lr: 0.001, backbone_lr_mult: 0.5, sam_head_lr_mult: 0.1, warmup_steps: 3, "
    "lambda_sam: %s, max_steps: %d}"
)

# The two-process run of conftest's `two_process_run`: tests that interrupt it start it the same way.
TWO_PROCESS_STAGES = [PROBE % 9, JOINT % ("10.0", 3)]
TWO_PROCESS_SETTINGS = ("log_batches=true", "data.workers=2")


def train_args(store: Path, out: Path, sam_checkpoint: str, stages: list[str], *extra: str) -> list[str]:
    """student/train.py's arguments: the tiny config on `store` into `out`, these stages, `extra` overrides."""
    return [
        "--config",
        TINY,
        "--set",
        f"store.url={store}",
        "--set",
        f"output_dir={out}",
        "--set",
        f"model.sam_checkpoint={sam_checkpoint}",
        "--set",
        f"stages=[{', '.join(stages)}]",
        *[x for e in extra for x in ("--set", e)],
    ]


def run(cmd: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """A command from the repository root, one torch thread a process, output captured."""
    return subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def batches(out: Path, rank: int = 0) -> dict[tuple[int, int], dict]:
    """(step, micro) -> the batch record; a step logged again after a resume keeps its last record."""
    lines = (out / "batches" / f"rank{rank}.jsonl").read_text().splitlines()
    return {(r["step"], r["micro"]): r for r in map(json.loads, lines)}
