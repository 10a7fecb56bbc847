"""Session-wide fixtures: the sample corpus and tiny teachers are built once per test session.
The helpers the tests share (functions, constants) are in tests/support/; this file holds fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.commands import REPO
from support.job_configs import (
    clip_shards,
    clip_source,
    sam_shards,
    sam_source,
    tiny_clip,
    tiny_sam,
    write_clip_job,
    write_job,
    write_sam_job,
)
from support.services import free_port, s3_environment

# No usage reporting from test clusters (it also polls a Prometheus that is not there).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    from pipeline.sample.corpus import build_sample_corpus

    out = tmp_path_factory.mktemp("sample")
    build_sample_corpus(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> dict[str, str]:
    from pipeline.teachers.tiny import write_tiny_teachers

    return write_tiny_teachers(str(tmp_path_factory.mktemp("teachers")))


@pytest.fixture
def job_yaml(tmp_path, sample_corpus, tiny_teachers):
    """The sample job (both kinds) written into tmp_path; a function taking the store (default tmp_path/store)."""

    def make(store: str | Path | None = None) -> Path:
        return write_job(
            tmp_path / "job.yaml",
            store or tmp_path / "store",
            [
                clip_source(clip_shards(sample_corpus)),
                sam_source(sam_shards(sample_corpus), name="sa1b-sample", unit_size=4),
            ],
            clip=tiny_clip(tiny_teachers, views=4),
            sam=tiny_sam(tiny_teachers, prompts=16),
        )

    return make


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto) on loopback for the session, as s3fs's own tests run one.

    Its credentials and endpoint (`support.services.s3_environment`) go into the Ray head's
    environment, so Ray workers have them as a cluster's nodes would have theirs; this process's
    own environment gets them only in the tests that ask for `s3_env`.
    """
    import logging
    import threading

    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    # moto checks `If-None-Match: *` and then stores the object, with other requests' threads in
    # between: two conditional PUTs of one key can both succeed, where S3 lets one. Its PUTs are
    # made one at a time here, so the server keeps S3's guarantee that the store's commits rely on.
    put, one_at_a_time = S3Response._key_response_put, threading.Lock()

    def atomic_put(self, *args, **kwargs):
        with one_at_a_time:
            return put(self, *args, **kwargs)

    S3Response._key_response_put = atomic_put
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    S3Response._key_response_put = put


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch) -> str:
    """The S3 server's credentials and endpoint in this process's environment for one test (and
    in the subprocesses it starts); returns the endpoint."""
    for name, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


def head_environment(s3_endpoint: str) -> dict[str, str]:
    """The environment of a test Ray head and so of its workers."""
    return {
        **os.environ,
        # The workers read and write S3 with credentials of their own, as a cluster's nodes do.
        **s3_environment(s3_endpoint),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Workers import the test-only flaky:// filesystem (tests/flaky_fs.py) from here.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])),
        # On SIGTERM the head first drains its node for up to this many seconds (30 by default)
        # and the idle test raylet never finishes draining: the teardown would wait it out.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }


def start_head(env: dict[str, str], log: Path, dashboard_port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A local Ray head of 2 CPUs in the foreground (--block: terminating it stops exactly this
    cluster, not whatever other Ray the machine runs, as `ray stop` would); returns it and its GCS
    address. Its own ports throughout: another Ray on the machine (the jobs the docs test starts, a
    developer's) holding one of Ray's defaults would leave it without an agent."""
    port = free_port()
    if dashboard_port is None:
        # No dashboard: its processes poll the cluster the whole session, a tenth of a core.
        dashboard = ["--include-dashboard", "false"]
    else:
        dashboard = [
            "--include-dashboard",
            "true",
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
        ]
    own_ports = {
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("ray")),
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
                *dashboard,
                *[str(a) for pair in own_ports.items() for a in pair],
                "--disable-usage-stats",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return head, f"127.0.0.1:{port}"


def stop_head(head: subprocess.Popen) -> None:
    head.terminate()
    head.wait(timeout=120)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory):
    """One local Ray head (2 CPUs) for the whole session; RAY_ADDRESS points jobs started as
    subprocesses at it too, so a killed job leaves no Ray of its own behind."""
    import secrets

    # Token authentication, as Ray 2.60 enables it for `ray start --head`: one token for the head,
    # this process and every job subprocess (they inherit the environment). Ray reads these when
    # imported, so they are set first.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    import ray

    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    head, address = start_head(head_environment(s3_endpoint), log)
    deadline = time.time() + 120
    while True:
        assert head.poll() is None, f"the test Ray head exited {head.returncode}:\n{log.read_text()[-3000:]}"
        try:
            # Workers of this process's jobs register the test-only flaky:// filesystem.
            ray.init(
                address=address, logging_level="WARNING", runtime_env={"worker_process_setup_hook": "flaky_fs.register"}
            )
            break
        except ConnectionError:
            assert time.time() < deadline, f"no Ray head at {address} after 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
    os.environ["RAY_ADDRESS"] = address
    yield address
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    stop_head(head)


@pytest.fixture(scope="session")
def ray_dashboard(ray_cluster, s3_endpoint, tmp_path_factory) -> str:
    """A second head, with a dashboard, for `ray job submit --address` (the session head has none);
    returns its job-submission address. Its jobs run on its own 2 CPUs."""
    log = tmp_path_factory.mktemp("ray-dashboard-head") / "head.log"
    port = free_port()
    head, _ = start_head(head_environment(s3_endpoint), log, dashboard_port=port)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert head.poll() is None, f"the dashboard head exited {head.returncode}:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5)
            break
        except urllib.error.HTTPError:  # it answers (a token is asked for): it is up
            break
        except OSError:
            assert time.time() < deadline, f"no dashboard at {url} after 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
    yield url
    stop_head(head)


@pytest.fixture(scope="session")
def clip_store(tmp_path_factory, sample_corpus, tiny_teachers, ray_cluster) -> Path:
    """The sample corpus's CLIP targets (tiny teacher, K=4), materialized once per session."""
    from pipeline.materialize.job import main

    root = tmp_path_factory.mktemp("clip-store")
    job = write_clip_job(root / "job.yaml", root / "store", sample_corpus, tiny_teachers)
    assert main([str(job)]) == 0
    return root / "store"


@pytest.fixture(scope="session")
def sam_store(tmp_path_factory, sample_corpus, tiny_teachers, ray_cluster) -> Path:
    """The SA-1B sample's SAM targets (tiny teacher, P=16, 2 rounds, fp16), materialized once per session."""
    from pipeline.materialize.job import main

    root = tmp_path_factory.mktemp("sam-store")
    job = write_sam_job(root / "job.yaml", root / "store", sam_shards(sample_corpus), tiny_teachers)
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


@pytest.fixture(scope="session")
def two_process_run(train_store, tiny_teachers, tmp_path_factory) -> Path:
    """An uninterrupted two-process run (`accelerate launch --multi_gpu`, two gloo processes on the
    CPU): probe 9 steps then joint 3, every batch logged, two loader workers a process. The run
    that other tests interrupt and resume must end with its weights."""
    from support.training import TWO_PROCESS_SETTINGS, TWO_PROCESS_STAGES, run, train_args

    out = tmp_path_factory.mktemp("two-processes") / "run"
    p = run(
        [
            str(Path(sys.executable).with_name("accelerate")),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            str(free_port()),
            "student/train.py",
            *train_args(train_store, out, tiny_teachers["sam"], TWO_PROCESS_STAGES, *TWO_PROCESS_SETTINGS),
        ]
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out
