"""The trainer, run as users run it (subprocesses on the tiny configuration, real store, CPU).

- two processes really run, see disjoint data and take equal steps;
- a run killed mid-stage resumes from its latest checkpoint at the same step with the same batches
  and ends with the same weights as an uninterrupted run; no teacher is ever imported or run;
- probe learns (held-out retrieval far above chance and above the start);
- rehearsal: joint training with lambda = 10 keeps the SAM head's agreement with the cached
  teacher masks much closer to its start than lambda = 0, while CLIP retrieval keeps improving.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.commands import REPO
from support.training import JOINT, PROBE, batches, run
from support.training import train_args as tiny_train_args

pytestmark = pytest.mark.slow


def train_args(store: Path, out: Path, stages: list[str], *extra: str) -> list[str]:
    return tiny_train_args(store, out, os.environ["TINY_SAM"], stages, *extra)


def train_without_teachers(args: list[str], out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    report = out.parent / f"{out.name}-imports.json"
    report.unlink(missing_ok=True)
    p = run(
        [sys.executable, "tests/train_without_teachers.py", *args], {"NO_TEACHER_REPORT": str(report), **(env or {})}
    )
    if p.returncode != -signal.SIGKILL:  # a killed process writes no report
        assert json.loads(report.read_text())["imported"] == [], "the trainer imported a teacher module"
    return p


def validations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def tiny_sam_env(tiny_teachers):
    os.environ["TINY_SAM"] = tiny_teachers["sam"]
    yield
    os.environ.pop("TINY_SAM")


def test_two_processes_see_disjoint_data_and_take_equal_steps(two_process_run):
    out = two_process_run
    ranks = [batches(out, r) for r in range(2)]
    assert all(rec["world_size"] == 2 for b in ranks for rec in b.values())
    assert sorted(ranks[0]) == sorted(ranks[1]) == [(s, 0) for s in range(1, 13)]  # equal step counts
    for stage in ("probe", "joint"):
        for kind in ("clip", "sam"):
            seen = [{i.split("#")[0] for r in b.values() if r["stage"] == stage for i in r[kind]} for b in ranks]
            assert not seen[0] & seen[1], f"{stage}: both ranks read {kind} samples {seen[0] & seen[1]}"
    # Per-process batch: the global 8 CLIP images (224 px) split over 2 processes.
    assert {len(r["clip"]) for r in ranks[0].values() if r["resolution"] == 224} == {4}
    assert (out / "export" / "student.safetensors").exists()


def test_killed_run_resumes_at_the_same_step_and_batch_without_any_teacher(train_store, tmp_path):
    stages = [PROBE % 4, JOINT % ("10.0", 4)]
    extra = ("log_batches=true", "ckpt_every=3", "val_every=100")
    full = tmp_path / "full"
    p = train_without_teachers(train_args(train_store, full, stages, *extra), full)
    assert p.returncode == 0, p.stderr[-3000:]

    cut = tmp_path / "cut"
    args = train_args(train_store, cut, stages, *extra)
    p = train_without_teachers(args, cut, {"SAMCLIP_KILL_AT": "train_step:7"})
    assert p.returncode == -signal.SIGKILL
    assert sorted(os.listdir(cut / "checkpoints")) == ["step_00000003", "step_00000004", "step_00000006"]
    p = train_without_teachers([*args, "--resume", str(cut / "checkpoints" / "step_00000004")], cut)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == [
        f"error: --resume {cut}/checkpoints/step_00000004: {cut}/checkpoints holds later checkpoints "
        "(step_00000006); move them out of it first"
    ], p.stderr[-3000:]
    p = train_without_teachers([*args, "--set", "data.held_out=0.3", "--resume", "latest"], cut)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == [
        f"error: data.held_out: {cut}/checkpoints/step_00000006 was trained holding out 0.2, this run 0.3: samples "
        "it trained on would be validated on; resume with --set data.held_out=0.2"
    ], p.stderr[-3000:]
    p = train_without_teachers([*args, "--resume", "latest"], cut)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming from" in p.stdout
    assert "step 6)" in p.stdout

    want, got = batches(full), batches(cut)
    assert sorted(got) == sorted(want) == [(s, 0) for s in range(1, 9)]
    for key in want:  # steps 7 and 8 ran again after the resume: same samples, views, prompts, loss
        assert got[key]["clip"] == want[key]["clip"], key
        assert got[key]["sam"] == want[key]["sam"], key
        assert got[key]["loss"] == pytest.approx(want[key]["loss"], rel=1e-5), key
    a, b = load_file(full / "export" / "student.safetensors"), load_file(cut / "export" / "student.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def probed(train_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "run"
    p = run(
        [
            sys.executable,
            "student/train.py",
            *train_args(train_store, out, [PROBE % 50], "val_every=100", "keep_checkpoints=4"),
        ]
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_probe_learns_above_chance_and_above_the_start(probed):
    first, last = validations(probed)[0], validations(probed)[-1]
    assert first["step"] == 0
    assert last["step"] == 50
    chance = last["val/clip224_chance"]
    assert last["val/clip224_retrieval_top1"] >= 5 * chance
    assert last["val/clip224_retrieval_top1"] > first["val/clip224_retrieval_top1"] + 0.2
    assert last["val/clip224_centred_cosine"] > first["val/clip224_centred_cosine"] + 0.5


def test_rehearsal_keeps_the_sam_head_close_to_the_teacher_while_clip_improves(probed, train_store, tmp_path):
    # From the probe's step-25 checkpoint: its CLIP head is still learning, as the paper's is when
    # joint training starts (on 80 training images a probed head is nearly done by step 50, with
    # batches mixing four units, and has nothing left to gain).
    checkpoint = probed / "checkpoints" / "step_00000025"
    runs = {}
    for lam in ("10.0", "0.0"):  # side by side: one core each
        out = tmp_path / f"lambda{lam}"
        cmd = [
            sys.executable,
            "student/train.py",
            *train_args(train_store, out, [PROBE % 25, JOINT % (lam, 30)], "val_every=100"),
            "--resume",
            str(checkpoint),
        ]
        runs[lam] = (
            out,
            subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            ),
        )
    result = {}
    for lam, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        joint = [v for v in validations(out) if v["stage"] == "joint"]
        result[lam] = (joint[0], joint[-1])
    (s10, e10), (s0, e0) = result["10.0"], result["0.0"]
    # Both start from the probe checkpoint, whose SAM path is the teacher's own.
    assert s10["val/sam_logit_corr"] == pytest.approx(s0["val/sam_logit_corr"])
    assert s10["val/sam_logit_corr"] > 0.99
    drop10 = s10["val/sam_logit_corr"] - e10["val/sam_logit_corr"]
    drop0 = s0["val/sam_logit_corr"] - e0["val/sam_logit_corr"]
    assert drop0 > 0.05, (drop10, drop0)
    assert drop10 < drop0 / 2, (drop10, drop0)
    assert e10["val/sam_soft_iou"] > e0["val/sam_soft_iou"]
    # ... while the CLIP side keeps learning under lambda = 10.
    assert e10["val/clip224_retrieval_top1"] > s10["val/clip224_retrieval_top1"], (s10, e10)
    assert e10["val/clip224_centred_cosine"] > s10["val/clip224_centred_cosine"], (s10, e10)


def test_bad_training_configs_stop_with_one_line(train_store, tmp_path):
    cases = [
        (["stages=[{name: warmup}]"], "stages.0.name"),
        (["data.clip.resolutions=[224, 450]"], "data.clip.resolutions"),
        (["grad_accum=3"], "data.clip.batch_size: 8 does not split over 1 processes x 3 accumulation steps"),
        (["store.url=" + str(tmp_path / "nowhere")], "nowhere"),
        (["data.clip.sources=[nope]"], "has no committed clip units from data.clip.sources ['nope'] to train on"),
    ]
    for overrides, message in cases:
        p = run(
            [
                sys.executable,
                "student/train.py",
                *train_args(train_store, tmp_path / "run", [PROBE % 2]),
                *[x for o in overrides for x in ("--set", o)],
            ]
        )
        assert p.returncode == 2, (overrides, p.stderr[-2000:])
        assert message in p.stderr, (overrides, p.stderr[-2000:])
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
def test_every_tracker_logs_the_run_under_its_name_without_storage_options(train_store, tmp_path):
    out = tmp_path / "probe-trackers"
    p = run(
        [
            sys.executable,
            "student/train.py",
            *train_args(train_store, out, [PROBE % 2], "log_with=[tensorboard, wandb, mlflow]", "log_every=1"),
            "--set",
            "store.storage_options={anon: false}",
        ],
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_TRACKING_URI": ""},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    import hashlib

    run_id = hashlib.blake2b(str(out).encode(), digest_size=8).hexdigest()  # a requeued run continues it
    (wandb_log,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")  # what `wandb sync` uploads
    assert b"stages.0.name" in wandb_log.read_bytes()
    assert b"storage_options" not in wandb_log.read_bytes()
    import mlflow

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient("file:" + str(out / "mlruns"))
    experiment = client.get_experiment_by_name("probe-trackers")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "probe-trackers"
    assert (out / "mlflow_run_id.txt").read_text() == mlflow_run.info.run_id  # a requeued run continues it
    assert mlflow_run.data.params["stages.0.name"] == "probe"
    assert not any("storage_options" in k for k in mlflow_run.data.params)
    assert not any("storage_options" in v for v in mlflow_run.data.tags.values())
    assert "loss/clip" in mlflow_run.data.metrics
