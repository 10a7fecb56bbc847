"""A materialize job on a three-node Ray cluster on this machine survives losing a worker node.

The head (no CPUs: it hosts only the driver) and two worker nodes are `ray start` processes on
127.0.0.1, the job joins through RAY_ADDRESS. Once at least one unit and not all are committed
(polled), one worker node is killed with everything it runs: its teacher actor, its read tasks,
the blocks in its object store. Ray re-runs what was lost on the other node; parts written twice
are dropped by the driver. The job itself must exit 0 with every sample stored exactly once.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO, _free_port, assert_sound
from storage_schemas.store import open_store

UNITS = 20  # the 4 sample shards of 25 in units of 5


def start_node(*args: str) -> subprocess.Popen:
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray_bin, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-gpus", "0",
                             "--object-store-memory", str(300 * 1024**2), "--disable-usage-stats", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a `ray start --block` process and everything under it (raylet, workers)."""
    procs = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in procs:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.fixture
def three_nodes():
    port = _free_port()
    head = start_node("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false")
    address = f"127.0.0.1:{port}"
    workers = [start_node("--address", address, "--num-cpus", "4") for _ in range(2)]
    env = {**os.environ, "RAY_ADDRESS": address}
    probe = "import ray; ray.init(); import sys; sys.exit(0 if ray.cluster_resources().get('CPU', 0) >= 8 else 1)"
    deadline = time.time() + 300
    while (p := subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)).returncode:
        assert time.time() < deadline and head.poll() is None, f"the three-node cluster did not come up: {p.stderr[-2000:]}"
        time.sleep(2)
    yield address, workers
    for p in [*workers, head]:
        if p.poll() is None:
            kill_tree(p)


@pytest.mark.slow
def test_a_worker_node_killed_mid_job_is_survived(three_nodes, tmp_path, sample_corpus, tiny_teachers):
    address, workers = three_nodes
    store = tmp_path / "store"
    job = tmp_path / "job.yaml"
    job.write_text(f"""
store: {{url: "{store}"}}
sources: [{{name: sample, kind: clip, shards: "{sample_corpus}/clip/{{00000..00003}}.tar", unit_size: 5}}]
clip: {{teacher: {{arch: samclip-tiny-clip, pretrained: "{tiny_teachers['clip']}"}}, views: 4}}
ray: {{teacher_actors: 2, batch_size: 4}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.materialize", str(job), "--report", str(tmp_path / "r.json")],
                            cwd=REPO, env={**os.environ, "RAY_ADDRESS": address},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    assert report["units_done"] == UNITS and not report["units_failed"], report
    s = open_store(str(store))
    views = s.read_table("clip", "views")
    keys = list(zip(views.column("shard").to_pylist(), views.column("key").to_pylist(),
                    views.column("view").to_pylist()))
    assert len(keys) == len(set(keys)) == 100 * 4
    assert sum(c.n_input for c in s.commits("clip")) == 100
    assert_sound(store)
