"""The pipeline-against-bare-teacher lines both pipeline benchmarks print."""
from __future__ import annotations

import statistics


def steady_rate(report: dict, rows: str, first_rows: int) -> float | None:
    """rows/s from the first target's arrival to the last commit: start-up (Ray, the teacher's
    load, the first batch) is behind by then. None when the window is too short to mean anything."""
    window = report["seconds"] - report["first_target_seconds"]
    if window <= 0.25 * report["seconds"]:
        return None
    return (report["rows"][rows] - first_rows) / window


def print_pipeline_vs_bare(reports: list[dict], rows: str, bare_rate: float, first_rows: int) -> None:
    """reports: the job's JSON reports, one per run; rows: "views" or "images"; first_rows: rows in
    the first target batch. Prints medians over the runs."""
    steady = [steady_rate(r, rows, first_rows) for r in reports]
    whole = statistics.median(r["rows"][rows] / r["seconds"] for r in reports)
    print(f"  bare teacher                  {bare_rate:9.3f} {rows}/s")
    if None in steady:
        print("  pipeline, steady window            n/a  (the targets reached the driver together: use more input)")
    else:
        rate = statistics.median(steady)
        print(f"  pipeline, steady window       {rate:9.3f} {rows}/s  (median of {len(reports)} runs: "
              f"{', '.join(f'{s:.3f}' for s in steady)})")
        print(f"  pipeline / bare, steady       {rate / bare_rate:9.3f}")
    print(f"  pipeline, dataset start to end {whole:8.3f} {rows}/s  (start-up "
          f"{statistics.median(r['first_target_seconds'] for r in reports):.1f} s to the first target)")
