"""Session-wide fixtures: the sample corpus and tiny teachers are built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No usage reporting from test clusters (it also polls a Prometheus that is not there).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from pipeline.sample_data import build_sample_corpus

    out = tmp_path_factory.mktemp("sample")
    build_sample_corpus(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> dict[str, str]:
    from pipeline.teachers.tiny import write_tiny_teachers

    return write_tiny_teachers(str(tmp_path_factory.mktemp("teachers")))


@pytest.fixture
def job_yaml(tmp_path, sample_corpus, tiny_teachers):
    """Write a sample-corpus job config into tmp_path; returns a function taking extra YAML text."""

    def make(store: str | None = None, extra: str = "") -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(f"""
store: {{url: "{store or tmp_path / "store"}"}}
sources:
  - {{name: sample, kind: clip, shards: "{sample_corpus}/clip/{{00000..00003}}.tar"}}
  - {{name: sa1b-sample, kind: sam, shards: "{sample_corpus}/sam/sa_{{000000..000001}}.tar", unit_size: 4}}
clip:
  teacher: {{arch: samclip-tiny-clip, pretrained: "{tiny_teachers["clip"]}"}}
  views: 4
sam:
  teacher: {{model: tiny, checkpoint: "{tiny_teachers["sam"]}"}}
  prompts: 16
{extra}""")
        return path

    return make


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args...` from the repository root, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAY_DASHBOARD: dict[str, str] = {}  # the session head's job-submission address, once it runs
S3_SECRET = "samclip-test-secret-" + os.urandom(6).hex()  # must never reach a log, a store or an output


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto) on loopback for the session, as s3fs's own tests run one.

    Credentials and endpoint go into the environment before the Ray head starts, so Ray workers
    inherit them as a cluster's nodes would have theirs; nothing passes them explicitly.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="samclip-test-key",
        AWS_SECRET_ACCESS_KEY=S3_SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray head (2 CPUs) for the whole session; RAY_ADDRESS points jobs started as
    subprocesses at it too, so a killed job leaves no Ray of its own behind."""
    import secrets

    # Token authentication, as Ray 2.60 enables it for `ray start --head`: one token for the head,
    # this process and every job subprocess (they inherit the environment). Ray reads these when
    # imported, so they are set first.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    import ray

    port, dashboard_port = _free_port(), _free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # --block keeps the head in the foreground: terminating it stops exactly this cluster, not
    # whatever other Ray the machine runs (as `ray stop` would). The dashboard (loopback only)
    # takes `ray job submit`; `python` in a job's entrypoint is this environment's.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Workers import the test-only flaky:// filesystem (tests/flaky_fs.py) from here.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])),
    }
    head = subprocess.Popen(
        [
            ray_bin,
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    address = f"127.0.0.1:{port}"
    RAY_DASHBOARD["url"] = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + 120
    while True:
        try:
            # Workers of this process's jobs register the test-only flaky:// filesystem.
            ray.init(
                address=address, logging_level="WARNING", runtime_env={"worker_process_setup_hook": "flaky_fs.register"}
            )
            break
        except ConnectionError:
            if time.time() > deadline or head.poll() is not None:
                raise
            time.sleep(1)
    os.environ["RAY_ADDRESS"] = address
    yield address
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    head.terminate()
    head.wait(timeout=120)


# Whole shards (unit_size 0), not the default cut: the session stores keep the units the golden,
# student and training tests were written against (the student shuffles units by name, and the
# rehearsal test's few-step comparison depends on that order).
CLIP_JOB = """
store: {{url: "{store}"}}
sources:
  - {{name: sample, kind: clip, shards: "{corpus}/clip/{{00000..00003}}.tar", unit_size: 0}}
clip:
  teacher: {{arch: samclip-tiny-clip, pretrained: "{clip}"}}
  views: 4
ray: {{batch_size: 8}}
"""


def write_clip_job(path: Path, store: Path | str, corpus: Path, teachers: dict) -> Path:
    path.write_text(CLIP_JOB.format(store=store, corpus=corpus, clip=teachers["clip"]))
    return path


@pytest.fixture(scope="session")
def clip_store(tmp_path_factory, sample_corpus, tiny_teachers, ray_cluster) -> Path:
    """The sample corpus's CLIP targets (tiny teacher, K=4), materialized once per session."""
    from pipeline.materialize import main

    root = tmp_path_factory.mktemp("clip-store")
    job = write_clip_job(root / "job.yaml", root / "store", sample_corpus, tiny_teachers)
    assert main([str(job)]) == 0
    return root / "store"


SAM_JOB = """
store: {{url: "{store}"}}
sources:
  - {{name: sa1b, kind: sam, shards: "{shards}", unit_size: 4}}
sam:
  teacher: {{model: tiny, checkpoint: "{sam}"}}
  prompts: 16
  rounds: 2
  precision: {precision}
"""


def write_sam_job(path, store, shards, teachers, precision="fp16"):
    path.write_text(SAM_JOB.format(store=store, shards=shards, sam=teachers["sam"], precision=precision))
    return path


@pytest.fixture(scope="session")
def sam_store(tmp_path_factory, sample_corpus, tiny_teachers, ray_cluster) -> Path:
    """The SA-1B sample's SAM targets (tiny teacher, P=16, 2 rounds, fp16), materialized once per session."""
    from pipeline.materialize import main

    root = tmp_path_factory.mktemp("sam-store")
    job = write_sam_job(
        root / "job.yaml", root / "store", f"{sample_corpus}/sam/sa_{{000000..000001}}.tar", tiny_teachers
    )
    assert main([str(job)]) == 0
    return root / "store"


@pytest.fixture(scope="session")
def train_store(tmp_path_factory, clip_store, sam_store) -> Path:
    """One store with both kinds (the CLIP and SAM session stores merged), for the student."""
    import shutil

    root = tmp_path_factory.mktemp("train-store") / "store"
    shutil.copytree(clip_store, root)
    shutil.copytree(sam_store, root, dirs_exist_ok=True)
    return root


def assert_sound(store_path) -> None:
    """`pipeline.validate` finds no problem; the only unlisted files are temporaries of killed writes."""
    from pipeline.validate import validate
    from storage_schemas.store.root import StoreRoot

    report = validate(StoreRoot(str(store_path)))
    assert report.problems == [], report.problems
    assert all(".tmp-" in p for p in report.orphans), report.orphans


def shard_keys(corpus, shard: str) -> set[str]:
    with tarfile.open(corpus / "clip" / f"{shard}.tar") as tar:
        return {m.name.split(".")[0] for m in tar.getmembers()}


def assert_exactly_once(store_path, corpus, views: int = 4) -> dict:
    """Every input sample exactly once in views (all K views) or errors; returns unit -> attempt id."""
    from storage_schemas.store import open_store

    store = open_store(str(store_path))
    commits = store.commits("clip")
    assert sorted(c.unit for c in commits) == ["00000", "00001", "00002", "00003"]
    table = store.read_table("clip", "views").to_pylist()
    errors = store.read_table("clip", "errors")
    error_keys = [(r["shard"], r["key"]) for r in (errors.to_pylist() if errors else [])]
    per_sample: dict[tuple, list[int]] = {}
    for r in table:
        per_sample.setdefault((r["shard"], r["key"]), []).append(r["view"])
    assert all(sorted(v) == list(range(views)) for v in per_sample.values())
    assert not set(per_sample) & set(error_keys) and len(error_keys) == len(set(error_keys))
    for c in commits:
        keys = {(c.shard, k) for k in shard_keys(corpus, c.shard)}
        assert {k for k in per_sample if k[0] == c.shard} | {k for k in error_keys if k[0] == c.shard} == keys
        assert c.n_input == len(keys)
    listed = store.committed_files("clip", "views")  # one file per part, each under its unit's folder
    assert sorted(listed) == sorted(f"{store_path}/clip/sample/{c.unit}/{p}.parquet" for c in commits for p in c.parts)
    assert_sound(store_path)
    return {c.unit: c.attempt_id for c in commits}
