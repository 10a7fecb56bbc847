"""Stopping on a signal: every training process finishes the same step, one checkpoint is written
for it, and the run exits 0 leaving a marker that says it was preempted.

    stop = StopRequest().install()      # in every training process, before anything slow
    ...each optimiser step: if (signum := stop.agreed(accelerator)): save, then raise Preempted
    write_marker(output_dir, step, signum, checkpoint)   # OUTPUT/preempted.json

SLURM sends SIGTERM before a preemption or the time limit (or, with `--signal=B:USR1@120`, SIGUSR1
to the batch script, which forwards it); Kubernetes and spot instances send SIGTERM with a grace
period, often to one pod only. A handler only sets a flag; each optimiser step all-reduces it (the
largest signal number wins), so when any process was signalled, all stop after that step. The
launchers (`torchrun`, `accelerate launch`) report a signalled child as a failure whatever it did,
so the marker, not the exit status, tells a requeue script that the run should go on
(jobs/preemptible.sh). DataLoader workers ignore these signals: a worker killed by the SIGTERM a
scheduler sends to every process would take its process's last batches with it.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER = "preempted.json"


class Preempted(Exception):
    """The run stopped on a signal after checkpointing `step`."""

    def __init__(self, step: int, signum: int, checkpoint: str):
        super().__init__(f"stopped on {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")
        self.step, self.signum, self.checkpoint = step, signum, checkpoint


class StopRequest:
    """The flag the stop signals set in this process, and the step's agreement on it."""

    def __init__(self):
        self.signum = 0

    def install(self) -> "StopRequest":
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        # A second signal changes nothing: the save under way completes (a launcher that runs out of
        # patience sends SIGKILL, which leaves the previous checkpoint as it was).
        if not self.signum:
            self.signum = signum
            sys.stderr.write(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint\n")

    def agreed(self, accelerator) -> int:
        """The signal any process got (its number; 0: none). A collective: every process calls it
        at the same point of each step."""
        flag = torch.tensor([self.signum], dtype=torch.long, device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())


class ForwardStop:
    """For a process that runs training runs one after another (student.sweep): a stop signal it
    gets goes to the run under way, which checkpoints and exits; the caller then stops too."""

    def __init__(self):
        self.child: subprocess.Popen | None = None

    def install(self) -> "ForwardStop":
        for s in STOP_SIGNALS:
            signal.signal(s, self._forward)
        return self

    def _forward(self, signum: int, frame) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self, cmd: list[str]) -> int:
        """`cmd`'s exit status, stop signals forwarded to it meanwhile."""
        self.child = subprocess.Popen(cmd)
        try:
            return self.child.wait()
        finally:
            self.child = None


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """A DataLoader worker's `worker_init_fn`: the stop signals are its process's business."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def write_marker(output_dir: str, stopped: Preempted) -> str:
    """OUTPUT/preempted.json, written whole (a temporary name, then renamed)."""
    path = os.path.join(output_dir, MARKER)
    record = {
        "step": stopped.step,
        "signal": signal.Signals(stopped.signum).name,
        "checkpoint": stopped.checkpoint,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
    return path


def remove_marker(output_dir: str) -> None:
    """A run that starts is not preempted (yet): an old marker must not requeue it after a crash."""
    try:
        os.remove(os.path.join(output_dir, MARKER))
    except FileNotFoundError:
        pass
