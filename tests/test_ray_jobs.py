"""Cluster job specs: every YAML under jobs/ parses and names the commands the tests run, the
training configs keep the paper's global batch, and the sample job runs through `ray job submit`
on a real Ray head (loopback, token authentication: the session head of conftest, stopped at the
session's end)."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_job_config
from storage_schemas.store import open_store
from student.config import load_train_config
from support.commands import REPO

JOBS = REPO / "jobs"
MATERIALIZE = "python -m pipeline.materialize"


def load(rel: str) -> dict:
    return yaml.safe_load((JOBS / rel).read_text())


def test_every_job_yaml_parses_and_names_the_commands_the_tests_run():
    files = sorted(p.relative_to(JOBS).as_posix() for p in JOBS.rglob("*.yaml"))
    assert {
        "sample.yaml",
        "merged41m.yaml",
        "ray/runtime_env.yaml",
        "ray/sample.job.yaml",
        "ray/merged41m.job.yaml",
        "ray/cluster-aws.yaml",
        "kuberay/rayjob-merged41m.yaml",
        "accelerate/1node-8gpu.yaml",
        "accelerate/4node-8gpu.yaml",
    } <= set(files)
    for rel in files:
        assert isinstance(load(rel), dict), rel
    # Job configs are valid pipeline configs (typed, checked; no store is contacted).
    for rel in [f for f in files if "/" not in f]:
        load_job_config(str(JOBS / rel), [])
    paper = load_job_config(str(JOBS / "merged41m.yaml"), [])
    assert paper.clip.teacher.arch == "ViT-L-14"
    assert paper.clip.views == 10
    assert paper.sam.prompts == 64
    assert {s.name for s in paper.sources} == {"cc3m", "cc12m", "yfcc15m", "in21k", "sa1b"}
    # Ray jobs: the entrypoint is the materialize command on a job config of this directory.
    entrypoints = {}
    for rel in [f for f in files if f.endswith(".job.yaml")]:
        spec = load(rel)
        argv = shlex.split(spec["entrypoint"])
        assert spec["entrypoint"].startswith(MATERIALIZE), rel
        assert (REPO / argv[3]).is_file(), rel
        runtime_env = load(Path(spec["runtime_env"]).relative_to("jobs").as_posix())
        assert runtime_env["working_dir"] == "."
        assert ".venv/" in runtime_env["excludes"]
        entrypoints[rel] = spec["entrypoint"]
    rayjob = load("kuberay/rayjob-merged41m.yaml")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["spec"]["entrypoint"] == entrypoints["ray/merged41m.job.yaml"]
    yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    (workers,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    cluster = load("ray/cluster-aws.yaml")
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert any("p4d" in t["node_config"]["InstanceType"] for t in cluster["available_node_types"].values())
    # Every documented `ray job submit` line runs one of the checked entrypoints.
    docs = (JOBS / "README.md").read_text() + (JOBS / "ray" / "sample.job.yaml").read_text()
    assert "-- python -m pipeline.materialize jobs/merged41m.yaml --report" in docs
    assert "-- python -m pipeline.materialize jobs/sample.yaml" in docs


@pytest.mark.parametrize(
    "rel, processes, clip, sam", [("accelerate/1node-8gpu.yaml", 8, 256, 4), ("accelerate/4node-8gpu.yaml", 32, 64, 1)]
)
def test_multi_node_training_configs_keep_the_papers_global_batch(rel, processes, clip, sam):
    acc = load(rel)
    assert acc["distributed_type"] == "MULTI_GPU"
    assert acc["num_processes"] == acc["num_machines"] * 8 == processes
    paper = load_train_config(str(REPO / "student" / "configs" / "paper.yaml"))
    got = (paper.per_process_batch("clip", processes), paper.per_process_batch("sam", processes))
    assert got == (clip, sam)
    assert clip * processes == 2048
    assert sam * processes == 32
    sbatch = (JOBS / "slurm" / "train-4x8.sbatch").read_text()
    assert "--nodes=4" in sbatch
    assert "--nproc_per_node=8" in sbatch
    assert "student/train.py --config student/configs/paper.yaml" in sbatch
    with pytest.raises(Exception, match=r"data.clip.batch_size: 2048 does not split over 3 processes"):
        paper.per_process_batch("clip", 3)


@pytest.mark.slow
def test_sample_job_through_ray_job_submit(sample_corpus, tiny_teachers, ray_dashboard, tmp_path):
    spec = load("ray/sample.job.yaml")
    store = tmp_path / "store"
    # The entrypoint as the YAML gives it; --set points jobs/sample.yaml's relative paths at the
    # test's corpus and teachers (the uploaded working directory carries no data).
    overrides = [
        f"store.url={store}",
        f"sources.0.shards={sample_corpus}/clip/{{00000..00003}}.tar",
        f"sources.1.shards={sample_corpus}/sam/sa_{{000000..000001}}.tar",
        f"clip.teacher.pretrained={tiny_teachers['clip']}",
        f"sam.teacher.checkpoint={tiny_teachers['sam']}",
    ]
    entrypoint = spec["entrypoint"] + "".join(f" --set {shlex.quote(o)}" for o in overrides)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # A loaded head's dashboard agent can be late to register; Ray answers "No available agent to
    # submit job, please try again later", and so the test does, a few times, as a user would.
    for attempt in range(4):
        submission = f"sample-{tmp_path.name}-{attempt}"
        p = subprocess.run(
            [
                ray_bin,
                "job",
                "submit",
                "--address",
                ray_dashboard,
                "--runtime-env",
                spec["runtime_env"],
                "--submission-id",
                submission,
                "--",
                *shlex.split(entrypoint),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            # The session head's RAY_ADDRESS would win over --address: that head has no dashboard.
            env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        if p.returncode == 0 or "No available agent to submit job" not in p.stdout + p.stderr:
            break
        time.sleep(10)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "succeeded" in p.stdout
    assert "clip targets" in p.stdout
    assert "sam targets" in p.stdout
    summary = open_store(str(store)).summary()
    assert summary["clip"]["samples_stored"] + summary["clip"]["samples_errors"] == 100
    assert summary["sam"]["units"] == 4
    assert summary["sam"]["samples_stored"] == 12
    status = subprocess.run(
        [ray_bin, "job", "status", "--address", ray_dashboard, submission],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert f"Job '{submission}' succeeded" in status.stdout, status.stdout + status.stderr
