"""The pipeline-against-bare-teacher lines both pipeline benchmarks print."""

from __future__ import annotations

import json
import os
import shutil
import statistics

import pyarrow.parquet as pq
import yaml

from storage_schemas.store import open_store, table_files


def steady_rate(store_root: str, kind: str, table: str) -> float | None:
    """Rows/s the teacher actors wrote, from the first part file's write to the last (a local
    store's mtimes), the first part's rows left out: start-up (Ray, the teacher's load, the first
    batch) is behind by then, and the driver's lag in receiving blocks does not enter. None with
    fewer than 3 parts."""
    store = open_store(store_root)
    parts = sorted(
        (os.path.getmtime(store.storage.full(rel)), pq.read_metadata(store.storage.full(rel)).num_rows)
        for record in store.commits(kind)
        for rel in table_files(record, table)
    )
    if len(parts) < 3:
        return None
    return sum(n for _, n in parts[1:]) / (parts[-1][0] - parts[0][0])


def run_jobs(work: str, job: dict, runs: int, kind: str, table: str) -> tuple[list[dict], list[float | None]]:
    """`python -m pipeline.materialize` in this process `runs` times, each into a fresh
    WORK/store: (the job's reports, each run's steady_rate)."""
    from pipeline.materialize.job import main as materialize

    with open(f"{work}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    reports, steady = [], []
    for _ in range(runs):
        shutil.rmtree(f"{work}/store", ignore_errors=True)
        assert materialize([f"{work}/job.yaml", "--report", f"{work}/report.json"]) == 0
        with open(f"{work}/report.json") as f:
            reports.append(next(r for r in json.load(f)["reports"] if r["kind"] == kind))
        steady.append(steady_rate(f"{work}/store", kind, table))
    return reports, steady


def print_pipeline_vs_bare(reports: list[dict], steady: list[float | None], rows: str, bare_rate: float) -> None:
    """reports: the job's JSON reports, one per run; steady: each run's steady_rate; rows: "views"
    or "images". Prints medians over the runs."""
    whole = statistics.median(r["rows"][rows] / r["seconds"] for r in reports)
    print(f"  bare teacher                  {bare_rate:9.3f} {rows}/s")
    if None in steady:
        print("  pipeline, steady window            n/a  (fewer than 3 parts in a run: use more input)")
    else:
        rate = statistics.median(steady)
        print(
            f"  pipeline, steady window       {rate:9.3f} {rows}/s  (median of {len(reports)} runs: "
            f"{', '.join(f'{s:.3f}' for s in steady)})"
        )
        print(f"  pipeline / bare, steady       {rate / bare_rate:9.3f}")
    print(
        f"  pipeline, dataset start to end {whole:8.3f} {rows}/s  (start-up "
        f"{statistics.median(r['first_target_seconds'] for r in reports):.1f} s to the first target)"
    )
