"""A materialize job on a three-node Ray cluster on this machine survives losing a worker node.

The head (no CPUs: it hosts only the driver) and two worker nodes are `ray start` processes on
127.0.0.1, the job joins through RAY_ADDRESS. Once at least one unit and not all are committed
(polled), one worker node is killed with everything it runs: its teacher actor, its read tasks,
the blocks in its object store. Ray re-runs what was lost on the other node; parts written twice
are dropped by the driver. The job itself must exit 0 with every sample stored exactly once.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.config import RayConfig
from storage_schemas.store import open_store
from support.commands import REPO
from support.job_configs import clip_shards, clip_source, tiny_clip, write_job
from support.services import free_port
from support.store_checks import assert_sound

UNITS = 20  # the 4 sample shards of 25 in units of 5


def start_node(env: dict, temp_dir: Path, *args: str) -> subprocess.Popen:
    """A `ray start --block` node on 127.0.0.1 with ports of its own: nodes on one address that
    pick theirs at random can collide (a raylet then dies on "bind: Address already in use")."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    ports = [
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--dashboard-agent-grpc-port",
        "--dashboard-agent-listen-port",
    ]
    low = free_port()
    return subprocess.Popen(
        [
            ray_bin,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(300 * 1024**2),
            "--disable-usage-stats",
            "--temp-dir",
            str(temp_dir),
            *[a for p in ports for a in (p, str(free_port()))],
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(low + 40),
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a `ray start --block` process and everything under it (raylet, workers)."""
    procs = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in procs:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for_cpus(env: dict, cpus: int, head: subprocess.Popen, timeout: float) -> str | None:
    """None once the cluster has `cpus` CPUs; else, after `timeout` s, the last probe's stderr."""
    probe = f"import ray, sys; ray.init(); sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= {cpus} else 1)"
    deadline = time.time() + timeout
    while (p := subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)).returncode:
        assert head.poll() is None, f"the head node exited ({head.returncode}): {p.stderr[-2000:]}"
        if time.time() > deadline:
            return p.stderr
        time.sleep(2)
    return None


@pytest.fixture
def three_nodes():
    # Its own session files, apart from the session's Ray; short, as Ray's socket paths must fit 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    port = free_port()
    # `ray start --head` turns token authentication on: one token for the nodes, the probes and the job.
    env = {
        **os.environ,
        "RAY_ADDRESS": f"127.0.0.1:{port}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    head = start_node(env, temp_dir, "--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false")
    workers = []
    try:
        for n in (1, 2):  # one at a time, each seen by the head before the next starts
            # A node given a port that another process took between `free_port` and its start never
            # registers (seen once in ~5 suite runs): it is started again on fresh ports.
            for _ in range(3):
                workers.append(start_node(env, temp_dir, "--address", env["RAY_ADDRESS"], "--num-cpus", "4"))
                if (problem := wait_for_cpus(env, 4 * n, head, timeout=60)) is None:
                    break
                kill_tree(workers.pop())
            assert problem is None, f"the cluster did not reach {4 * n} CPUs in 3 tries: {problem[-2000:]}"
        yield env, workers
    finally:  # also when the cluster never came up: no node may outlive the test
        for p in [*workers, head]:
            if p.poll() is None:
                kill_tree(p)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_worker_node_killed_mid_job_is_survived(three_nodes, tmp_path, sample_corpus, tiny_teachers):
    env, workers = three_nodes
    store = tmp_path / "store"
    job = write_job(
        tmp_path / "job.yaml",
        store,
        [clip_source(clip_shards(sample_corpus), unit_size=5)],
        clip=tiny_clip(tiny_teachers, views=4),
        ray=RayConfig(teacher_actors=2, batch_size=4),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.materialize", str(job), "--report", str(tmp_path / "r.json")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    commits = store / "_commits" / "clip" / "sample"
    deadline = time.time() + 300
    while not (commits.exists() and any(commits.iterdir())):
        assert proc.poll() is None, f"the job ended before any unit committed: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.05)
    kill_tree(workers[0])
    at_kill = len(list(commits.iterdir()))
    out, _ = proc.communicate(timeout=600)
    assert 1 <= at_kill < UNITS, f"{at_kill} of {UNITS} units committed when the node was killed"
    assert proc.returncode == 0, out[-4000:]
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert report["units_done"] == UNITS, report
    assert not report["units_failed"], report
    s = open_store(str(store))
    views = s.read_table("clip", "views")
    keys = list(
        zip(views.column("shard").to_pylist(), views.column("key").to_pylist(), views.column("view").to_pylist())
    )
    assert len(keys) == len(set(keys)) == 100 * 4
    assert sum(c.n_input for c in s.commits("clip")) == 100
    assert_sound(store)
