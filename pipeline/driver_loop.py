"""The driver of a materialize job: it reads the teacher actors' metadata rows and commits units.

    report = run_units(plan, kind_plan, "clip", build_dataset, policy_hash)

The actors write every part's files; the driver only accepts parts whose sample sets are disjoint
until parts and error rows cover a unit, then commits it (pipeline/unit_commit.py) and removes
what the record does not list (storage_schemas/README.md, "The commit protocol"); once the
stream has ended, what Ray's replays of retried tasks wrote under those units unreported.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from tqdm import tqdm

from pipeline.plan import JobPlan, KindPlan
from pipeline.read_plan import read_tasks
from pipeline.report import JobReport
from pipeline.unit_commit import (
    commit_unit,
    remove_leftovers,
    remove_part_files,
    remove_pending_leftovers,
    remove_replayed_parts,
)
from pipeline.units import END, PART, TEACHER_FAILED, UNIT_FAILED, ShardTask, UnitCollector, committed_parts
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.root import StorageFailure


def run_units(
    plan: JobPlan, kp: KindPlan, kind: str, build_dataset: Callable[[list[dict]], Any], policy_hash: str
) -> JobReport:
    """Stream the pending shards of one kind through `build_dataset(tasks)`, whose teacher actors
    write the parts, and commit every unit whose samples are all covered by parts or errors;
    shared by the CLIP and SAM sides. The driver sees metadata rows only (pipeline.parts)."""
    report = JobReport(kind)
    pending, shards, committed = [], {}, set()
    for shard in kp.shards:
        done = committed_parts(shard, kp.committed[shard.url])
        report.units_skipped += len(kp.committed[shard.url])
        committed |= {(r.source, r.unit) for r in kp.committed[shard.url]}
        if done is not None:
            shards[(shard.source, shard.name)] = shard
            pending.append((shard, done))
    if not pending:
        return report
    tasks = read_tasks(plan.storage, kind, pending)
    # Parts read by range: each is its own read, so a failure fails that unit alone.
    by_range = {(t["source"], ShardTask(**t).unit_of(t["read_parts"][0])) for t in tasks if t["read_parts"]}
    streamed = {(t["source"], t["shard"]) for t in tasks if not t["read_parts"]}
    remove_pending_leftovers(plan.storage, kind, [shards[k] for k in shards], committed)
    collectors: dict[tuple[str, str], UnitCollector] = {}
    failed_at: dict[tuple[str, str], int] = {}  # shard -> first sample of the unit its read stopped in
    read_to_end: set[tuple[str, str]] = set()  # shards whose last end row (it carries the shard's count) arrived
    committed_now: dict[tuple[str, str], CommitRecord] = {}
    finished = set(committed)  # units committed (before or by this run) or failed

    def fail(unit_key: tuple[str, str], shard: str, reason: str, detail: str) -> None:
        finished.add(unit_key)
        collectors.pop(unit_key, None)
        report.units_failed.append(
            dict(source=unit_key[0], shard=shard, unit=unit_key[1], reason=reason, detail=detail)
        )

    def read_failed(row: dict, shard_key: tuple[str, str]) -> None:
        """The read of a shard stopped in the row's unit: that unit and the shard's later ones fail;
        earlier units were read to their end and commit as their parts arrive."""
        start = failed_at[shard_key] = int(row["part_start"])
        what = f"{row['reason']}: {row['detail']}"
        if (row["source"], row["unit"]) not in finished:
            fail((row["source"], row["unit"]), row["shard"], str(row["reason"]), str(row["detail"]))
        for key, c in list(collectors.items()):
            if (key[0], c.shard.name) == shard_key and c.part_start > start:
                fail(key, row["shard"], "shard_failed", f"its shard's read stopped in {row['unit']} ({what})")
        if shards[shard_key].unit_size:
            report.units_failed.append(
                dict(
                    source=row["source"],
                    shard=row["shard"],
                    unit=f"{row['shard']}.p*",
                    reason="shard_failed",
                    detail=f"parts after {row['unit']} not read ({what})",
                )
            )

    t0 = time.time()
    progress = tqdm(
        desc=f"{kind} units committed",
        unit="unit",
        total=None if any(t["unit_size"] and not t["read_parts"] for t in tasks) else len(tasks),
    )
    # prefetch_batches=0: with Ray's default of 1 a block is handed over only once the next has
    # arrived, which holds every commit back by a teacher batch.
    for batch in build_dataset(tasks).iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        report.driver_bytes += batch.nbytes
        for row in batch.to_pylist():
            shard_key, unit_key = (row["source"], row["shard"]), (row["source"], row["unit"])
            if row["storage_retries"] != "{}":  # a part's writes, or a read task's tar index
                report.storage_retries.update(json.loads(row["storage_retries"]))
            if row["status"] == END and row["shard_samples"] >= 0:
                read_to_end.add(shard_key)
            if row["status"] == UNIT_FAILED and unit_key in by_range:
                if unit_key not in finished:
                    fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
                continue
            if row["status"] == UNIT_FAILED and shard_key not in failed_at:
                read_failed(row, shard_key)
                continue
            if unit_key in finished or row["part_start"] >= failed_at.get(shard_key, 1 << 62):
                if row["status"] == PART and unit_key in committed_now:  # Ray re-ran a batch of a committed unit
                    report.leftovers_removed += remove_part_files(plan.storage, row)
                continue
            if row["status"] == TEACHER_FAILED:
                fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
                continue
            if row["status"] == PART:
                report.first_target_seconds = report.first_target_seconds or time.time() - t0
                kill_point("during_teacher")
            c = collectors.get(unit_key)
            if c is None:
                c = collectors[unit_key] = UnitCollector(shards[shard_key], str(row["unit"]), int(row["part_start"]))
            c.add(row)
            if c.complete:
                try:
                    t_commit = time.perf_counter()
                    record = commit_unit(plan.storage, kind, c, policy_hash)
                    report.commit_seconds.append([c.n_in_unit, time.perf_counter() - t_commit])
                except (StorageFailure, OSError) as e:  # the unit stays uncommitted: a rerun redoes it
                    fail(unit_key, row["shard"], "storage_failed", f"{type(e).__name__}: {e}")
                    continue
                del collectors[unit_key]
                finished.add(unit_key)
                committed_now[unit_key] = record
                report.leftovers_removed += remove_leftovers(plan.storage, record)
                report.units_done += 1
                report.samples += record.n_input
                report.samples_stored += record.n_stored
                report.rows.update({k: n for k, n in record.rows.items() if k != "errors"})
                report.errors_by_reason.update(str(e["reason"]) for e in c.errors.values())
                report.bytes_written += sum(f.size for f in record.files)
                if c.note:
                    report.shard_notes.append(f"{row['source']}/{row['shard']}: {c.note}")
                progress.update(1)
    progress.close()
    report.leftovers_removed += remove_replayed_parts(plan.storage, kind, list(committed_now.values()))
    # Batches lost for good (their actor died past the retries): units some rows of which never came,
    # and shards whose last units left no row at all.
    for (source, unit), c in collectors.items():
        report.units_failed.append(
            dict(
                source=source,
                shard=c.shard.name,
                unit=unit,
                reason="incomplete",
                detail=f"{len(c.covered | c.errors.keys())} of "
                f"{c.n_in_unit if c.n_in_unit is not None else '?'} samples arrived",
            )
        )
    for source, unit in by_range - finished - collectors.keys():
        report.units_failed.append(
            dict(
                source=source,
                shard=unit.rsplit(".", 1)[0],
                unit=unit,
                reason="incomplete",
                detail="no row of it arrived (batches lost past their retries)",
            )
        )
    for key in streamed - read_to_end - failed_at.keys():
        if not any((source, c.shard.name) == key for (source, _), c in collectors.items()):
            shard = shards[key]
            report.units_failed.append(
                dict(
                    source=key[0],
                    shard=key[1],
                    unit=key[1] if not shard.unit_size else f"{key[1]}.p*",
                    reason="incomplete",
                    detail="no row of its last units arrived (batches lost past their retries)",
                )
            )
    report.seconds = time.time() - t0
    return report
