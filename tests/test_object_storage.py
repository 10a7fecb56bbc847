"""S3 everywhere, against a real S3-protocol server on loopback (moto, started by conftest):
the pipeline reads shards and teachers from s3:// and writes the store there, the trainer and the
evaluation read it back, and the credentials and endpoint never reach a log, a store or an output.
The credentials are in this process's environment only in the tests that ask for `s3_env`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import s3fs

from pipeline.config import RayConfig
from storage_schemas.store import StoreConfig, open_store
from support.commands import REPO, run_module
from support.job_configs import clip_source, sam_source, tiny_clip, tiny_sam, write_job
from support.services import AMBIENT_AWS, S3_KEY, S3_REGION, S3_SECRET

BUCKET = "samclip-test"
STORE = f"s3://{BUCKET}/store"


@pytest.fixture(scope="module")
def s3_inputs(s3_endpoint, sample_corpus, tiny_teachers) -> s3fs.S3FileSystem:
    """The sample corpus and the tiny teachers uploaded to the bucket."""
    # Credentials given, not from the environment; no region (in us-east-1 a bucket takes no location constraint).
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=s3_endpoint)
    fs.mkdir(BUCKET)
    for side in ("clip", "sam"):
        fs.put(f"{sample_corpus}/{side}/", f"{BUCKET}/sample/{side}/", recursive=True)
    for name, path in tiny_teachers.items():
        fs.put(path, f"{BUCKET}/teachers/{Path(path).name}")
    return fs


def s3_job(path: Path, tiny_teachers: dict, storage_options: dict | None = None) -> Path:
    """The sample job with its inputs, teachers and store in the bucket."""
    options = storage_options or {}
    teachers = {k: f"s3://{BUCKET}/teachers/{Path(tiny_teachers[k]).name}" for k in ("clip", "sam")}
    return write_job(
        path,
        StoreConfig(STORE, options),
        [
            clip_source(f"s3://{BUCKET}/sample/clip/{{00000..00003}}.tar", storage_options=options),
            sam_source(f"s3://{BUCKET}/sample/sam/sa_{{000000..000001}}.tar", unit_size=4, storage_options=options),
        ],
        clip=tiny_clip(teachers, views=4),
        sam=tiny_sam(teachers, prompts=16, rounds=2),
        ray=RayConfig(batch_size=8),
    )


def assert_no_secret(where: str, text: str | bytes, endpoint: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for needle in (S3_SECRET, endpoint.split("//", 1)[1]):
        assert needle.encode() not in data, f"{needle!r} leaked into {where}"


@pytest.mark.slow
def test_pipeline_trainer_and_evaluation_on_s3(s3_inputs, s3_env, tiny_teachers, clip_store, ray_cluster, tmp_path):
    s3_endpoint = s3_env
    job = s3_job(tmp_path / "job.yaml", tiny_teachers)
    outputs = []
    p = run_module("pipeline.materialize", str(job), env={"SAMCLIP_CACHE": str(tmp_path / "cache")}, timeout=600)
    outputs.append(p)
    assert p.returncode == 0, p.stderr[-3000:]
    store = open_store(STORE)
    summary = store.summary()
    assert summary["clip"]["samples_stored"] == 100
    assert summary["sam"]["samples_stored"] == 12
    records = store.commits("clip")
    assert all(r.input.url.startswith(f"s3://{BUCKET}/") and r.input.etag for r in records)
    # Same inputs, same teacher: the targets equal those of the local session store.
    got = store.read_table("clip", "views").sort_by(
        [("shard", "ascending"), ("key", "ascending"), ("view", "ascending")]
    )
    want = (
        open_store(str(clip_store))
        .read_table("clip", "views")
        .sort_by([("shard", "ascending"), ("key", "ascending"), ("view", "ascending")])
    )
    assert got.column("pixel_hash").to_pylist() == want.column("pixel_hash").to_pylist()
    np.testing.assert_allclose(
        np.asarray(got.column("embedding").to_pylist(), np.float32),
        np.asarray(want.column("embedding").to_pylist(), np.float32),
        atol=2e-3,
    )
    p = run_module(
        "pipeline.text_targets",
        str(job),
        "--name",
        "sample",
        "--classes",
        "jobs/sample_classes.txt",
        env={"SAMCLIP_CACHE": str(tmp_path / "cache")},
    )
    outputs.append(p)
    assert p.returncode == 0, p.stderr[-3000:]

    # The trainer streams units and shards from S3 (a forked loader worker included).
    out = tmp_path / "train"
    p = subprocess.run(
        [
            sys.executable,
            "student/train.py",
            "--config",
            "student/configs/tiny.yaml",
            "--set",
            f"store.url={STORE}",
            "--set",
            f"output_dir={out}",
            "--set",
            f"model.sam_checkpoint=s3://{BUCKET}/teachers/{Path(tiny_teachers['sam']).name}",
            "--set",
            "data.workers=1",
            "--set",
            "stages=[{name: probe, epochs: 1, lr: 0.002, max_steps: 3}, "
            "{name: joint, epochs: 1, lr: 0.0004, max_steps: 2}]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SAMCLIP_CACHE": str(tmp_path / "cache")},
    )
    outputs.append(p)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_module(
        "student.evaluate", "sam-agreement", "--export", str(out / "export"), "--out", str(tmp_path / "eval")
    )
    outputs.append(p)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mask_iou" in p.stdout, p.stderr[-3000:]

    for i, q in enumerate(outputs):
        assert_no_secret(f"the output of command {i}", q.stdout + q.stderr, s3_endpoint)
    for f in s3_inputs.find(f"{BUCKET}/store"):
        assert_no_secret(f, s3_inputs.cat_file(f), s3_endpoint)
    for f in [*out.rglob("*"), *(tmp_path / "eval").rglob("*")]:
        if f.is_file():
            assert_no_secret(str(f), f.read_bytes(), s3_endpoint)


@pytest.mark.slow
def test_credentials_from_the_config_alone_are_used_and_never_printed(s3_inputs, s3_endpoint, tiny_teachers, tmp_path):
    """A subprocess: its environment has no AWS_* variable at all (the config's options alone)."""
    options = {
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": S3_REGION},
    }
    job = s3_job(tmp_path / "job.yaml", tiny_teachers, options)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.plan", str(job)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**bare, "SAMCLIP_CACHE": str(tmp_path / "cache")},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert_no_secret("pipeline.plan's output", p.stdout + p.stderr, s3_endpoint)
    # A wrong endpoint stops with one line that names the store, not the credentials.
    bad_options = {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": "http://127.0.0.1:9"}}
    bad = s3_job(tmp_path / "bad.yaml", tiny_teachers, bad_options)
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.plan", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=bare,
    )
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert S3_SECRET not in p.stderr


def test_training_hyperparameters_logged_to_tensorboard_leave_storage_options_out():
    from student.config import load_train_config
    from student.train import flat_hparams

    cfg = load_train_config(
        str(REPO / "student" / "configs" / "tiny.yaml"), ['store.storage_options={key: k, secret: "' + S3_SECRET + '"}']
    )
    assert cfg.store.storage_options["secret"] == S3_SECRET
    hparams = flat_hparams(cfg)
    assert "store.url" in hparams
    assert not any("storage_options" in k for k in hparams)
    assert S3_SECRET not in repr(hparams)


def test_s3_env_gives_this_process_the_servers_credentials(s3_env, s3_inputs):
    assert os.environ["AWS_ENDPOINT_URL"] == s3_env
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET
    assert s3fs.S3FileSystem(skip_instance_cache=True).ls(f"{BUCKET}/teachers")  # the environment alone


def test_a_test_that_does_not_ask_for_s3_sees_no_aws_variables(ray_cluster):
    """The S3 server runs and the Ray head has its credentials (`ray_cluster` needs `s3_endpoint`),
    and earlier tests had them through `s3_env`: this process's environment holds no AWS_* variable
    beyond those it started with (none where the suite usually runs)."""
    left = sorted(k for k, v in os.environ.items() if k.startswith("AWS_") and AMBIENT_AWS.get(k) != v)
    assert left == [], f"AWS variables in this process's environment: {left}"  # names only, no values
    assert not any(S3_SECRET in v for v in os.environ.values()), "the S3 secret is in this process's environment"
