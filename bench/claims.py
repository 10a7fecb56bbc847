"""What sharing a store costs: the claim protocol per unit, and several jobs on one store.

    python bench/claims.py [--units 200] [--jobs 4] [--shards 24] [--shard-samples 400] [--work DIR]

per unit:   on a local directory and on a moto S3 server on 127.0.0.1, in this process, for `--units`
            units: the commit as it was before jobs could share a store (one overwriting PUT of the
            record) against today's (created only if absent, then read back), and what claims add
            (take a fresh claim: create generation 0 and list it; the read task's check that the unit
            is not committed; one renewal; removing the claims once the unit commits). S3 requests
            are counted at the server (one log record per HTTP request); ms are wall time per unit.
jobs:       `python -m pipeline.materialize` over webdataset shards of scikit-image photographs
            (bench/pipeline_ceiling.py's corpus) with the tiny random CLIP teacher, K=4, whole shards
            as units: one job alone, then `--jobs` jobs started together on one store, all on one
            local Ray head (4 logical CPUs; each job: one teacher actor of 0.5 CPU, read tasks of
            0.25). Wall time from launch to the last exit, units each job committed, commit races lost.
Targets (issue "many writers"): every job commits at least one unit (a job that claims everything at
start and leaves the others idle fails), no unit is committed twice (races lost are work done
twice), and the store validates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.pipeline_ceiling import ARCH, REPO, SEED, SOURCE, make_shards
from pipeline.materialize.claims import remove_claims, renew_claim, take_claim, this_driver
from pipeline.validate import validate
from storage_schemas.store import layout
from storage_schemas.store.commit import CommitRecord, InputRef, create_commit, read_commit
from storage_schemas.store.root import StoreRoot


class RequestCount(logging.Handler):
    """Counts the moto server's request log records: one per HTTP request."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def record_for(unit: str, attempt: str) -> CommitRecord:
    return CommitRecord(
        kind="clip",
        source=SOURCE,
        shard=unit,
        unit=unit,
        input=InputRef(f"s3://inputs/{unit}.tar", 1 << 20),
        n_input=4000,
        n_stored=4000,
        n_errors=0,
        rows={"views": 40000, "errors": 0},
        files=[],
        policy_hash="0" * 64,
        parts=[f"p{i * 256:07d}-{attempt}-{i:08x}" for i in range(16)],
        attempt_id=attempt,
    )


def per_unit_costs(storage: StoreRoot, units: int, count: RequestCount | None) -> dict[str, tuple[float, float]]:
    """step -> (ms per unit, requests per unit or nan)."""
    attempt, driver = uuid.uuid4().hex[:12], this_driver()
    names = [f"{i:05d}" for i in range(units)]
    claims = {}

    def old_commit(name):
        storage.write_bytes(layout.commit_path("clip", SOURCE, name), record_for(name, attempt).to_json().encode())

    def claim(name):
        claims[name] = take_claim(storage, "clip", SOURCE, name, attempt, 300.0, driver)

    steps = {
        "commit before (overwriting PUT)": old_commit,
        "claim (create g0, list)": claim,
        "committed? (read the record: absent)": lambda name: read_commit(storage, "clip", SOURCE, name + "x"),
        "renew (create g1)": lambda name: renew_claim(storage, claims[name]),
        "commit now (create, read back)": lambda name: create_commit(storage, record_for(name + "n", attempt)),
        "claims removed after the commit": lambda name: remove_claims(storage, "clip", SOURCE, name),
    }
    out = {}
    for step, fn in steps.items():
        before = count.n if count else 0
        t0 = time.perf_counter()
        for name in names:
            fn(name)
        seconds = time.perf_counter() - t0
        out[step] = (1000 * seconds / units, (count.n - before) / units if count else float("nan"))
    return out


def moto_storage(work: str) -> tuple[StoreRoot, RequestCount, object]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    count = RequestCount()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.handlers = [count]  # counted, not printed
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    storage = StoreRoot("s3://claims-bench/store", options)
    storage.fs.mkdir("claims-bench")
    return storage, count, server


def write_job(work: str, name: str, shards: list[str]) -> str:
    job = {
        "store": {"url": os.path.join(work, "store")},
        "compute_dtype": "fp32",
        "sources": [{"name": SOURCE, "kind": "clip", "shards": shards, "unit_size": 0}],
        "clip": {"teacher": {"arch": ARCH, "pretrained": None, "init_seed": SEED}, "views": 4},
        "ray": {"teacher_actors": 1, "cpus_per_actor": 0.5, "read_cpus": 0.25, "batch_size": 32},
    }
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(job, f)
    return path


def run_jobs(work: str, shards: list[str], n: int, env: dict) -> tuple[float, list[dict]]:
    """`n` jobs started together on a fresh store: (wall seconds, their clip reports)."""
    shutil.rmtree(os.path.join(work, "store"), ignore_errors=True)
    job = write_job(work, "job", shards)
    t0, procs = time.time(), []
    for i in range(n):
        log = open(os.path.join(work, f"job{n}-{i}.log"), "w")
        report = os.path.join(work, f"job{n}-{i}.json")
        cmd = [sys.executable, "-m", "pipeline.materialize", job, "--report", report]
        procs.append((subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT), report, log))
    reports = []
    for proc, report, log in procs:
        if proc.wait() != 0:
            sys.exit(f"a job exited {proc.returncode}; its output is in {log.name}")
        with open(report) as f:
            reports.append(json.load(f)["reports"][0])
    return time.time() - t0, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=200, help="units of the per-unit protocol figures")
    parser.add_argument("--jobs", type=int, default=4, help="jobs started together on one store")
    parser.add_argument("--shards", type=int, default=24, help="input shards (one unit each)")
    # Units must outlast the jobs' start-up skew: four jobs starting their Ray Data pipelines at once
    # on 2 cores reach their first target 60 s in, give or take 15 s; at 100 samples a unit takes
    # about a second, and a job that got going last found every unit claimed or done.
    parser.add_argument("--shard-samples", type=int, default=400, help="samples per shard")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "samclip-bench-claims"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    local = StoreRoot(os.path.join(args.work, "protocol-store"))
    shutil.rmtree(local.url, ignore_errors=True)
    s3, count, server = moto_storage(args.work)
    try:
        figures = {"local": per_unit_costs(local, args.units, None), "moto S3": per_unit_costs(s3, args.units, count)}
    finally:
        server.stop()
    print(f"per unit, {args.units} units: ms (S3: ms / HTTP requests)")
    print(f"  {'step':<40} {'local ms':>9} {'S3 ms':>8} {'S3 req':>7}")
    for step in figures["local"]:
        (ms, _), (s3_ms, s3_req) = figures["local"][step], figures["moto S3"][step]
        print(f"  {step:<40} {ms:>9.2f} {s3_ms:>8.2f} {s3_req:>7.1f}")
    added = [s for s in figures["local"] if not s.startswith("commit before")]
    for where, steps in figures.items():
        shared = sum(steps[s][0] for s in added)
        before = steps["commit before (overwriting PUT)"][0]
        print(f"  {where}: the sharing steps together {shared:.1f} ms per unit; the commit before {before:.1f} ms")

    shards = make_shards(args.work, args.shards * args.shard_samples, args.shard_samples)
    ray_dir = os.path.join(args.work, "ray")
    # A throwaway head on loopback for this run only: no token authentication, no usage reporting.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:6390", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = [ray_bin, "start", "--head", "--num-cpus", "4", "--num-gpus", "0", "--port", "6390"]
    head += ["--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--temp-dir", ray_dir]
    subprocess.run(head, env=env, check=True, capture_output=True)
    try:
        one_s, (one,) = run_jobs(args.work, shards, 1, env)
        many_s, reports = run_jobs(args.work, shards, args.jobs, env)
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
    sound = validate(StoreRoot(os.path.join(args.work, "store")))
    done = [r["units_done"] for r in reports]
    print(f"\n{args.shards} shards x {args.shard_samples} samples, K=4, tiny teacher; one local Ray head of 4 CPUs")
    print(f"  1 job:  {one_s:.1f} s, {one['units_done']} units")
    print(
        f"  {args.jobs} jobs: {many_s:.1f} s ({many_s / one_s:.2f}x one job), units each {done}, "
        f"commit races lost {sum(r['commit_races_lost'] for r in reports)}, "
        f"claims found held {sum(r['units_found_claimed'] for r in reports)}, "
        f"store {'sound' if not sound.problems else f'{len(sound.problems)} problems'}"
    )
    ok = min(done) >= 1 and sum(done) == args.shards and not sound.problems
    print(f"  target: every job commits >= 1 unit, each unit once, a sound store: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
