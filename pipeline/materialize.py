"""`python -m pipeline.materialize CONFIG.yaml [--set k=v ...]`: run the teachers once over the
sources and commit their targets into the store.

Without `RAY_ADDRESS` it starts a local Ray; with it (or under `ray job submit`) it uses that
cluster. A rerun of the same command skips committed units and redoes the others. Exit status:
0 when every unit committed, 1 when any failed (the summary names them), 2 for bad input.
"""

from __future__ import annotations

import argparse

from pipeline.config import load_job_config
from pipeline.kind_jobs import JOBS
from pipeline.plan import make_plan
from pipeline.ray_session import start_ray
from pipeline.report import write_report
from storage_schemas.plumbing.errors import run_cli
from storage_schemas.plumbing.typed_config import add_config_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.materialize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--report", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    has_gpu = start_ray(cfg)
    plan = make_plan(cfg, device="cuda" if has_gpu else "cpu")
    reports = []
    for kind, kp in plan.kinds.items():
        retried = plan.storage.retries.copy()
        reports.append(JOBS[kind](plan, kp, has_gpu))
        reports[-1].storage_retries.update(plan.storage.retries - retried)  # the actors' are in already
    for r in reports:
        print(r.table())
    write_report(plan.storage, reports, args.report)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    run_cli(main)
