"""How long a preempted training run needs: from the stop signal to its exit, and what it writes.

    python bench/preemption.py [--work DIR] [--archs tiny vit_b] [--stages probe joint]

For each student (`tiny`, and the paper's `vit_b` with a random init) and stage (`probe`: the CLIP
head trains; `joint`: everything but the prompt encoder trains, so the optimiser holds state for the
whole model), `student/train.py` runs alone on this machine's CPU against a synthetic store
(pipeline/sample/synthetic_store.py: D = 768 targets; CLIP batches of 2 images at 224 px, SAM batches of 1 image x 4
prompts at 1024 px), is sent SIGTERM once its second step is logged, and is timed to its exit. The
run finishes the step under way, then writes the checkpoint: the time splits into the rest of the
step and the save (the checkpoint folder's mtime). The checkpoint size is what a preemption writes
(model, optimiser, RNG states, the trainer's state).

The figures set the grace periods: torchrun's --shutdown-timeout must exceed the longest step plus
a save, Kubernetes' terminationGracePeriodSeconds and SLURM's --signal lead must exceed that. On a
GPU a step is far shorter and the save is what remains: its time is mostly bytes to the shared
filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.sample.synthetic_store import write_clip_store, write_sam_store
from student.preemption import MARKER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {
    "probe": "{name: probe, epochs: 1, lr: 0.0008, warmup_steps: 1, max_steps: 50}",
    "joint": "{name: joint, epochs: 1, lr: 0.00004, warmup_steps: 1, lambda_sam: 10.0, max_steps: 50}",
}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def stop_one(work: str, store: str, arch: str, stage: str) -> dict:
    out = os.path.join(work, f"run-{arch}-{stage}")
    subprocess.run(["rm", "-rf", out], check=True)
    overrides = {
        "store.url": store,
        "output_dir": out,
        "model.sam_arch": arch,
        "model.sam_checkpoint": "null",
        "model.mlp_hidden": 128 if arch == "tiny" else 1024,
        "data.clip.batch_size": 2,
        "data.clip.resolutions": "[224]",
        "data.sam.batch_size": 1,
        "data.sam.prompts": 4,
        "data.workers": 1,
        "data.streams": 1,
        "data.held_out": 0.05,
        "data.val_clip_samples": 4,
        "data.val_sam_images": 1,
        "stages": f"[{STAGES[stage]}]",
        "val_every": 1000,
        "ckpt_every": 1000,
        "log_batches": "true",
    }
    cmd = [sys.executable, "student/train.py", "--config", "student/configs/tiny.yaml"]
    cmd += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    log = open(os.path.join(work, f"run-{arch}-{stage}.log"), "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    batches = os.path.join(out, "batches", "rank0.jsonl")
    step_times = []
    while proc.poll() is None:
        n = len(open(batches).read().splitlines()) if os.path.exists(batches) else 0
        if n > len(step_times):
            step_times += [time.time()] * (n - len(step_times))
        if n >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        sys.exit(f"{arch}/{stage}: the run exited before its second step; see {log.name}")
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    ended = time.time()
    if code != 0 or not os.path.exists(os.path.join(out, MARKER)):
        sys.exit(f"{arch}/{stage}: exit {code} without {MARKER}; see {log.name}")
    marker = json.load(open(os.path.join(out, MARKER)))
    checkpoint = marker["checkpoint"]
    saved = os.path.getmtime(checkpoint)  # renamed into place when complete
    return {
        "step_s": step_times[1] - step_times[0],
        "signal_to_exit_s": ended - signalled,
        "to_saved_s": saved - signalled,
        "checkpoint_mb": folder_bytes(checkpoint) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "samclip-bench-preemption"))
    parser.add_argument("--archs", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--stages", nargs="+", default=["probe", "joint"], choices=list(STAGES))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    store = os.path.join(args.work, "synthetic")
    if not os.path.exists(os.path.join(store, "store", "sam", "_manifest.json")):
        write_clip_store(store, units=2, samples=32, part=16, views=2)
        write_sam_store(store, units=1, images=4)
    heads = ("step s", "signal->saved s", "signal->exit s", "checkpoint MB")
    print(f"{'student':<8} {'stage':<6} " + " ".join(f"{h:>16}" for h in heads))
    for arch in args.archs:
        for stage in args.stages:
            r = stop_one(args.work, os.path.join(store, "store"), arch, stage)
            figures = (r["step_s"], r["to_saved_s"], r["signal_to_exit_s"], r["checkpoint_mb"])
            print(f"{arch:<8} {stage:<6} " + " ".join(f"{v:>16.1f}" for v in figures))


if __name__ == "__main__":
    main()
