"""Training stopped from outside, as clusters stop it: SIGTERM to the launcher (Kubernetes, SLURM),
SIGUSR1 to one process (SLURM's --signal), a second signal and a SIGKILL while the checkpoint is
being written. Every process stops after the same step with one checkpoint for it, the run exits 0
leaving OUTPUT/preempted.json, and a requeue continues there with an uninterrupted run's weights.
Runs are real: torchrun with two gloo processes, or student/train.py alone, on the tiny config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from student.preemption import MARKER
from student.run_dir import STATE_FILE, checkpoint_names
from support.commands import REPO
from support.services import free_port
from support.training import PROBE, TWO_PROCESS_SETTINGS, TWO_PROCESS_STAGES, batches, run, train_args

pytestmark = pytest.mark.slow
GRACE_S = 30  # torchrun's default --shutdown-timeout: what a launcher waits before SIGKILL
HANDLED = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
FAR = "ckpt_every=1000"  # no periodic checkpoint within the run: only a stage's end and the stop save


def torchrun(args: list[str]) -> list[str]:
    launcher = str(Path(sys.executable).with_name("torchrun"))
    return [launcher, "--nproc_per_node=2", f"--master_port={free_port()}", HANDLED, "student/train.py", *args]


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def steps_logged(out: Path, rank: int = 0) -> int:
    path = out / "batches" / f"rank{rank}.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{log.read_text()[-3000:]}"
        assert time.time() - t0 < timeout, log.read_text()[-3000:]
        time.sleep(0.1)


def marker(out: Path) -> dict:
    return json.loads((out / MARKER).read_text())


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a / "export" / "student.safetensors"), load_file(b / "export" / "student.safetensors")
    assert x.keys() == y.keys()
    assert all(torch.allclose(x[k], y[k], atol=1e-6) for k in x)


def test_sigterm_on_the_launcher_checkpoints_that_step_and_a_requeue_continues_there(
    two_process_run, train_store, tiny_teachers, tmp_path
):
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = train_args(train_store, out, tiny_teachers["sam"], TWO_PROCESS_STAGES, *TWO_PROCESS_SETTINGS, FAR)
    job = start(["bash", "jobs/preemptible.sh", str(out), *torchrun(args)], log)
    wait_for(lambda: steps_logged(out) >= 3, job, log)  # mid-probe: its own checkpoint comes at step 9
    signalled = time.time()
    job.send_signal(signal.SIGTERM)  # to the script, which passes it to torchrun, which passes it on
    assert job.wait(timeout=120) == 3, log.read_text()[-3000:]  # 3: preempted, checkpointed, requeue me
    assert time.time() - signalled < GRACE_S, log.read_text()[-3000:]
    stopped = marker(out)
    step = stopped["step"]
    assert stopped["signal"] == "SIGTERM", stopped
    assert 3 <= step < 9, stopped
    assert checkpoint_names(out) == [f"step_{step:08d}"]
    assert stopped["checkpoint"].endswith(f"step_{step:08d}")
    state = json.loads((out / "checkpoints" / f"step_{step:08d}" / STATE_FILE).read_text())["state"]
    assert state["global_step"] == step
    assert max(s for s, _ in batches(out, 1)) == step
    # The requeue runs the same command: it resumes from that checkpoint and finishes.
    again = run(["bash", "jobs/preemptible.sh", str(out), *torchrun([*args, "--resume", "latest"])])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"step {step})" in again.stdout
    assert not (out / MARKER).exists()
    want, got = batches(two_process_run), batches(out)
    assert sorted(got) == sorted(want)
    assert all(got[k]["clip"] == want[k]["clip"] for k in want)
    assert_same_weights(two_process_run, out)


def test_sigusr1_to_one_process_stops_both_at_the_same_step(train_store, tiny_teachers, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = train_args(train_store, out, tiny_teachers["sam"], TWO_PROCESS_STAGES, *TWO_PROCESS_SETTINGS, FAR)
    job = start(torchrun(args), log)
    wait_for(lambda: steps_logged(out) >= 2, job, log)
    # torchrun's own children are the trainers (their loader workers, below them, share their RANK).
    (rank1,) = [p for p in psutil.Process(job.pid).children() if p.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGUSR1)
    # Both trainers exit 0, so torchrun does too; their loader workers ignored nothing they needed.
    assert job.wait(timeout=120) == 0, log.read_text()[-3000:]
    stopped = marker(out)
    assert stopped["signal"] == "SIGUSR1"
    assert max(s for s, _ in batches(out, 0)) == max(s for s, _ in batches(out, 1)) == stopped["step"]
    assert checkpoint_names(out)[-1] == f"step_{stopped['step']:08d}"


def test_a_second_signal_changes_nothing_and_a_save_cut_short_leaves_the_previous_checkpoint(
    train_store, tiny_teachers, tmp_path
):
    out, barrier, log = tmp_path / "run", tmp_path / "barrier", tmp_path / "run.log"
    args = train_args(train_store, out, tiny_teachers["sam"], [PROBE % 40], "ckpt_every=2", "val_every=1000")
    hold = {"SAMCLIP_WAIT_AT": "checkpoint_written@stop", "SAMCLIP_WAIT_FOR": f"{barrier}:2"}
    job = start([sys.executable, "student/train.py", *args], log, hold)
    wait_for(lambda: checkpoint_names(out), job, log)  # a periodic checkpoint is complete
    job.send_signal(signal.SIGTERM)
    # Held while the stop's checkpoint is written (files there, folder not yet renamed).
    wait_for(lambda: barrier.exists() and len(os.listdir(barrier)) == 1, job, log)
    previous = checkpoint_names(out)[-1]
    job.send_signal(signal.SIGTERM)  # a second signal: the save goes on
    time.sleep(1)
    assert job.poll() is None, "the second signal stopped the save"
    job.kill()  # the launcher's patience runs out: SIGKILL in the middle of the save
    job.wait()
    assert checkpoint_names(out)[-1] == previous
    assert not (out / MARKER).exists()
    assert any(n.endswith(".tmp") for n in os.listdir(out / "checkpoints"))
    again = run([sys.executable, "student/train.py", *args])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"stopped at {previous}: resuming it" in again.stdout
    assert (out / "export" / "student.json").exists()


def test_the_cluster_examples_give_the_save_its_time():
    """The requeue examples: signals forwarded, a launcher patience longer than a step and a save,
    a grace period longer than that, and the preempted exit status the script returns."""
    sbatch = (REPO / "jobs" / "slurm" / "train-4x8.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@120" in sbatch
    assert "--requeue" in sbatch
    assert "source jobs/preemptible.sh" in sbatch
    assert 'scontrol requeue "$SLURM_JOB_ID"' in sbatch
    assert HANDLED.replace("=", " ") in sbatch
    assert "--shutdown-timeout 100" in sbatch
    assert subprocess.run(["bash", "-n", "jobs/slurm/train-4x8.sbatch"], cwd=REPO).returncode == 0
    job = yaml.safe_load((REPO / "jobs" / "kubernetes" / "train-job.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["bash", "jobs/preemptible.sh", "/runs/paper"]
    assert "output_dir=/runs/paper" in command
    assert HANDLED in command
    patience = int(next(c for c in command if c.startswith("--shutdown-timeout=")).split("=")[1])
    assert pod["terminationGracePeriodSeconds"] > patience >= 100
    (ignored,) = [r for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert ignored["action"] == "Ignore"
    assert ignored["onExitCodes"]["values"] == [3]
    assert "PREEMPTED_STATUS=3" in (REPO / "jobs" / "preemptible.sh").read_text()


def test_a_sweep_passes_the_signal_to_its_run_and_stops_for_a_requeue(train_store, tiny_teachers, tmp_path):
    out, log = tmp_path / "sweep", tmp_path / "sweep.log"
    settings = train_args(train_store, out, tiny_teachers["sam"], [PROBE % 40], "log_batches=true", FAR)
    sweep = [sys.executable, "-m", "student.sweep", *settings, "--grid", "stages.0.lr=0.002,0.004", str(out)]
    job = start(["bash", "jobs/preemptible.sh", str(out), *sweep], log)
    wait_for(lambda: steps_logged(out / "lr=0.002") >= 2, job, log)
    job.send_signal(signal.SIGTERM)  # to the script, then the sweep, then the run under way
    assert job.wait(timeout=60) == 3, log.read_text()[-3000:]
    assert marker(out) == marker(out / "lr=0.002")
    assert not (out / "lr=0.004").exists()
    assert "sweep stopped: run lr=0.002 was preempted" in log.read_text()
