"""`python -m pipeline.materialize CONFIG.yaml [--set k=v ...]`: run the teachers once over the
sources and commit their targets into the store.

Without `RAY_ADDRESS` it starts a local Ray; with it (or under `ray job submit`) it uses that
cluster. A rerun of the same command skips committed units and redoes the others. Several runs
may write one store at once (another terminal, a resubmitted job, several clusters): each claims
the units it works on, and a run ends once every unit of its sources (of its `--partition`) is
committed, by it or another. Exit status: 0 when every unit committed, 1 when any failed (the
summary names them), 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import torch

from pipeline.config import load_job_config
from pipeline.materialize.kind_jobs import JOBS
from pipeline.materialize.plan import Partition, make_plan, record_cuts
from pipeline.materialize.ray_session import start_ray
from pipeline.materialize.report import write_report
from storage_schemas.plumbing.errors import run_cli
from storage_schemas.plumbing.typed_config import add_config_arguments
from storage_schemas.store.commit import new_attempt_id
from storage_schemas.store.root import StoreRoot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.materialize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--report", help="also write the summary JSON here")
    parser.add_argument(
        "--partition", type=Partition.parse, help="only the shards of partition I of N (I/N), by a hash of their names"
    )
    parser.add_argument(
        "--single-writer",
        action="store_true",
        help="no other job writes this store: allow a filesystem without create-if-absent (no hard links)",
    )
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    storage = StoreRoot(cfg.store.url, cfg.store.storage_options, single_writer=args.single_writer)
    storage.check_reachable(create=True)
    storage.check_create_if_absent()
    # Everything `python -m pipeline.plan` checks, before Ray starts: a mistake is one line in
    # seconds. Whether the teachers run on GPUs decides an `auto` compute dtype; a local Ray has this
    # machine's GPUs, a cluster's are known once joined (the plan is made again if they differ).
    remote = bool(os.environ.get("RAY_ADDRESS"))
    guess = "cuda" if torch.cuda.is_available() else "cpu"
    plan = make_plan(cfg, guess, args.partition, storage, device_known=not remote)
    has_gpu = start_ray(cfg)
    if remote or has_gpu != (guess == "cuda"):
        plan = make_plan(cfg, "cuda" if has_gpu else "cpu", args.partition, storage)
    record_cuts(plan)
    attempt = new_attempt_id()
    print(f"job attempt {attempt} on store {plan.storage.url}", flush=True)
    reports, retried = [], Counter()  # the first kind's report also counts the start-up's retries
    for kind, kp in plan.kinds.items():
        reports.append(JOBS[kind](plan, kp, has_gpu, attempt))
        reports[-1].storage_retries.update(storage.retries - retried)  # the workers' are in already
        retried = storage.retries.copy()
    for r in reports:
        print(r.table())
    write_report(plan.storage, reports, args.report, attempt)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    run_cli(main)
