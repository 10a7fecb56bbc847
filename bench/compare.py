"""The pipeline-against-bare-teacher lines both pipeline benchmarks print."""
from __future__ import annotations


def print_pipeline_vs_bare(report: dict, rows: str, bare_rate: float, first_rows: int) -> None:
    """report: the job's JSON report; rows: "views" or "images"; first_rows: rows in the first target batch."""
    rate = report["rows"][rows] / report["seconds"]
    print(f"  bare teacher      {bare_rate:9.3f} {rows}/s")
    print(f"  pipeline          {rate:9.3f} {rows}/s  (report: {report['seconds']:.1f} s)")
    print(f"  pipeline / bare   {rate / bare_rate:9.3f}")
    settled_seconds = report["seconds"] - report["first_target_seconds"]
    if settled_seconds > 0.25 * report["seconds"]:  # start-up is behind once the first target is in
        settled = (report["rows"][rows] - first_rows) / settled_seconds
        print(f"  after the first target ({report['first_target_seconds']:.1f} s): {settled:.3f} {rows}/s, "
              f"{settled / bare_rate:.3f} of bare")
    else:
        print(f"  first target after {report['first_target_seconds']:.1f} s: the targets reached the driver together")
