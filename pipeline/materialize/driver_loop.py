"""The driver of a materialize job: it reads the teacher actors' metadata rows and commits units.

    report = run_units(plan, kind_plan, "clip", build_dataset, policy_hash, attempt)

The actors write every part's files; the driver only accepts parts whose sample sets are disjoint
until parts and error rows cover a unit, then creates its record (pipeline/materialize/unit_commit.py) and
removes what the record does not list (docs/store.md, "The commit protocol"); once the
stream has ended, what Ray's replays of retried tasks wrote under those units unreported.

Several jobs may share a store. Read tasks claim what they read (pipeline/materialize/claims.py) and skip what
another live job holds; the driver renews its claims while their units are in flight. When its
stream has ended it waits for the units others held: each is committed by its holder, or its claim
expires (or is released) and this job runs it in another round. So a job that exits 0 leaves every
unit of its sources committed, by itself or by others.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable

from tqdm import tqdm

from pipeline.materialize.claims import Claim, ClaimKeeper, remove_claims, take_claim
from pipeline.materialize.plan import JobPlan, KindPlan
from pipeline.materialize.read_plan import read_tasks
from pipeline.materialize.report import JobReport
from pipeline.materialize.sources import InputShard
from pipeline.materialize.unit_commit import (
    PartsMissing,
    commit_unit,
    record_in_the_way,
    remove_attempt_files,
    remove_leftovers,
    remove_part_files,
    remove_replayed_parts,
)
from pipeline.materialize.units import (
    CLAIM,
    CLAIMED,
    COMMITTED,
    END,
    PART,
    TEACHER_FAILED,
    UNIT_FAILED,
    ShardTask,
    UnitCollector,
    committed_unit_nos,
)
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.store import TargetStore, layout
from storage_schemas.store.commit import CommitRecord, read_commit
from storage_schemas.store.layout import STREAM_SUFFIX, stream_claim_name, unit_name
from storage_schemas.store.root import StorageFailure

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (source, unit) or (source, shard)


def run_units(
    plan: JobPlan,
    kp: KindPlan,
    kind: str,
    build_dataset: Callable[[list[dict]], Any],
    policy_hash: str,
    attempt: str,
) -> JobReport:
    """Stream the pending shards of one kind through `build_dataset(tasks)`, whose teacher actors
    write the parts named for `attempt`, and commit every unit whose samples are all covered by
    parts or errors; shared by the CLIP and SAM sides. The driver sees metadata rows only
    (pipeline.materialize.parts)."""
    lease_s = plan.config.claims.lease_seconds
    return UnitDriver(plan, kp, kind, build_dataset, policy_hash, attempt, lease_s).run()


class UnitDriver:
    def __init__(
        self,
        plan: JobPlan,
        kp: KindPlan,
        kind: str,
        build_dataset: Callable[[list[dict]], Any],
        policy_hash: str,
        attempt: str,
        lease_s: float,
    ):
        self.storage, self.kind, self.build_dataset = plan.storage, kind, build_dataset
        self.policy_hash, self.attempt, self.lease_s = policy_hash, attempt, lease_s
        self.report = JobReport(kind)
        self.pending: list[tuple] = []  # (shard, the numbers of its committed units) with work left
        self.shards = {}
        self.finished: set[Key] = set()  # units committed (before, by this job or another) or failed
        for shard in kp.shards:
            done = committed_unit_nos(shard, kp.committed[shard.url])
            self.report.units_skipped += len(kp.committed[shard.url])
            self.finished |= {(r.source, r.unit) for r in kp.committed[shard.url]}
            if done is not None:
                self.shards[(shard.source, shard.name)] = shard
                self.pending.append((shard, done))
        self.collectors: dict[Key, UnitCollector] = {}
        self.failed_at: dict[Key, int] = {}  # shard -> first sample of the unit its read stopped in
        self.read_to_end: dict[Key, int] = {}  # shards whose last end row arrived -> their sample count
        self.committed_now: dict[Key, CommitRecord] = {}
        self.found_committed: set[Key] = set()  # units another job committed while this one ran
        self.by_range: set[Key] = set()  # units read by range: a read failure fails that unit alone
        self.tasks: dict[tuple, dict] = {}  # (source, claim names) -> read task
        self.waiting: dict[tuple, dict] = {}  # the tasks another live job's claims hold back
        self.keeper = ClaimKeeper(self.storage, lease_s)
        self.t0 = time.time()

    def run(self) -> JobReport:
        if not self.pending:
            self.remove_garbage_claims()
            return self.report
        tasks = read_tasks(self.storage, self.kind, self.pending, self.attempt, self.lease_s)
        # Jobs sharing a store start at different shards, rather than all contending for the first.
        start = int(self.attempt, 16) % len(tasks)
        self.keeper.start()
        try:
            self.run_round(tasks[start:] + tasks[:start])
            self.wait_for_claimed()
        finally:
            self.keeper.close()
        self.remove_garbage_claims()
        self.report.units_found_committed = len(self.found_committed)
        self.report.claims_lost = self.keeper.lost
        self.report.seconds = time.time() - self.t0
        return self.report

    def remove_garbage_claims(self) -> None:
        """Claims left on units this job saw finished: Ray re-runs a read task whose output was lost
        with its node, and the re-run claims its units again after the driver released them, in
        rows the driver may never see. Once a unit (or every unit of a streamed shard) is committed
        or failed, its claims are garbage, whoever holds them; one listing finds them."""
        for path in self.storage.list_files(f"{layout.CLAIMS_DIR}/{self.kind}"):
            found = layout.store_file(path)
            if found is None or found[0] != "claim":
                continue
            _, _, source, name = found
            shard = name[: -len(STREAM_SUFFIX)] if name.endswith(STREAM_SUFFIX) else None
            done = (source, name) in self.finished if shard is None else self.shard_finished((source, shard))
            if done:
                remove_claims(self.storage, self.kind, source, name)

    def shard_finished(self, shard_key: Key) -> bool:
        """Every unit of a streamed shard this job read to its end is committed or failed."""
        shard, total = self.shards.get(shard_key), self.read_to_end.get(shard_key)
        if shard is None or not shard.unit_size or total is None:
            return False
        units = {(shard.source, unit_name(shard.name, p)) for p in range(math.ceil(total / shard.unit_size))}
        return units <= self.finished

    # -- one pass of the dataset over some read tasks -------------------------------------------

    def run_round(self, tasks: list[dict]) -> None:
        by_range = {(t["source"], ShardTask(**t).unit_of(t["read_units"][0])) for t in tasks if t["read_units"]}
        streamed = {(t["source"], t["shard"]) for t in tasks if not t["read_units"]}
        self.by_range |= by_range
        self.tasks |= {_task_key(t): t for t in tasks}
        progress = tqdm(
            desc=f"{self.kind} units committed",
            unit="unit",
            total=None if any(t["unit_size"] and not t["read_units"] for t in tasks) else len(tasks),
        )
        committed_before = set(self.committed_now)
        # prefetch_batches=0: with Ray's default of 1 a block is handed over only once the next has
        # arrived, which holds every commit back by a teacher batch.
        for batch in self.build_dataset(tasks).iter_batches(
            batch_size=None, batch_format="pyarrow", prefetch_batches=0
        ):
            self.report.driver_bytes += batch.nbytes
            for row in batch.to_pylist():
                if self.handle_row(row):
                    progress.update(1)
        progress.close()
        this_round = [r for k, r in self.committed_now.items() if k not in committed_before]
        self.report.leftovers_removed += remove_replayed_parts(self.storage, self.kind, this_round)
        for source, shard in streamed:  # their units are all committed or failed by now
            self.keeper.release((self.kind, source, stream_claim_name(shard)))
        held_back = {(source, name) for source, names in self.waiting for name in names}
        self.report_lost_batches(by_range, streamed, held_back)

    def handle_row(self, row: dict) -> bool:
        """Take one metadata row; True when it completed a unit's commit."""
        shard_key, unit_key = (row["source"], row["shard"]), (row["source"], row["unit"])
        status = row["status"]
        if row["storage_retries"] != "{}":  # a part's writes, or a read task's tar index
            self.report.storage_retries.update(json.loads(row["storage_retries"]))
        if status in (CLAIM, CLAIMED, COMMITTED):
            self.claim_row(row)
            return False
        if status == END and row["shard_samples"] >= 0:
            self.read_to_end[shard_key] = int(row["shard_samples"])
            self.release_if_read(shard_key)
        if status == UNIT_FAILED and unit_key in self.by_range:
            if unit_key not in self.finished:
                self.fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
            return False
        if status == UNIT_FAILED and shard_key not in self.failed_at:
            self.read_failed(row, shard_key)
            return False
        if unit_key in self.finished or row["unit_start"] >= self.failed_at.get(shard_key, 1 << 62):
            if status == PART and unit_key in self.committed_now:  # Ray re-ran a batch of a committed unit
                self.report.leftovers_removed += remove_part_files(self.storage, row, self.committed_now[unit_key])
            return False
        if status == TEACHER_FAILED:
            self.fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
            return False
        if status == PART:
            self.report.first_target_seconds = self.report.first_target_seconds or time.time() - self.t0
            kill_point("during_teacher")
        c = self.collectors.get(unit_key)
        if c is None:
            c = self.collectors[unit_key] = UnitCollector(
                self.shards[shard_key], str(row["unit"]), int(row["unit_start"])
            )
        c.add(row)
        if not c.complete:
            return False
        done = self.commit(unit_key, c, row)
        self.release_if_read(shard_key)
        return done

    def release_if_read(self, shard_key: Key) -> None:
        """A streamed shard's claim goes once its read has ended and every unit of it is committed or
        failed: a unit whose rows are still queued in the teacher stage has no collector yet."""
        if self.shard_finished(shard_key):
            shard = self.shards[shard_key]
            self.keeper.release((self.kind, shard.source, stream_claim_name(shard.name)))

    def claim_row(self, row: dict) -> None:
        source = row["source"]
        if row["status"] == CLAIM:
            claim = Claim.from_json(row["detail"])
            self.keeper.hold(claim)
            if claim.took_over:
                self.report.claims_taken_over += 1
            # Rows reach the driver in any order: the unit may be done already (its claim row held
            # back in a batch without samples), and a claim held on would stall other jobs.
            if (source, claim.name) in self.finished:
                self.keeper.release(claim.key)
            elif (source, row["shard"]) in self.read_to_end:
                self.release_if_read((source, row["shard"]))
        elif row["status"] == CLAIMED:
            names = tuple(json.loads(row["detail"])["claims"])
            self.waiting[(source, names)] = self.tasks[(source, names)]
            self.report.units_found_claimed += 1
        else:  # another job committed these units since the plan (or while we held the shard)
            for unit in json.loads(row["detail"]):
                self.finished_elsewhere((source, unit))

    def finished_elsewhere(self, unit_key: Key, record: CommitRecord | None = None) -> None:
        """Another job committed the unit (`record`, read here if not given): its claims, ours
        included, are garbage now. A record that cannot stand for this job's unit fails it."""
        if unit_key in self.finished:
            return
        shard = self.unit_shard(unit_key)
        record = record or read_commit(self.storage, self.kind, *unit_key)
        problem = record_in_the_way(record, self.policy_hash, shard)
        if problem:
            self.fail(unit_key, shard.name, "record_in_the_way", problem)
            return
        self.finished.add(unit_key)
        self.found_committed.add(unit_key)
        self.collectors.pop(unit_key, None)  # an end row of it may have come before the news
        self.keeper.drop_committed(self.kind, *unit_key)

    def unit_shard(self, unit_key: Key) -> InputShard:
        source, unit = unit_key
        base, _, unit_no = unit.rpartition(".p")
        return self.shards.get((source, unit)) or self.shards[(source, base if unit_no.isdigit() else unit)]

    def commit(self, unit_key: Key, c: UnitCollector, row: dict) -> bool:
        try:
            t_commit = time.perf_counter()
            outcome = commit_unit(self.storage, self.kind, c, self.policy_hash, self.attempt)
            self.report.commit_seconds.append([c.n_in_unit, time.perf_counter() - t_commit])
        except PartsMissing as e:  # never committed: a rerun redoes the unit
            self.fail(unit_key, row["shard"], "parts_missing", str(e))
            return False
        except (StorageFailure, OSError) as e:  # the unit stays uncommitted: a rerun redoes it
            self.fail(unit_key, row["shard"], "storage_failed", f"{type(e).__name__}: {e}")
            return False
        del self.collectors[unit_key]
        if not outcome.won:  # another job committed the unit first: its record stands, ours goes
            problem = record_in_the_way(outcome.record, self.policy_hash, c.shard)
            if problem:
                self.fail(unit_key, row["shard"], "record_in_the_way", problem)
                return False
            self.finished.add(unit_key)
            self.keeper.drop_committed(self.kind, *unit_key)
            self.report.commit_races_lost += 1
            self.report.leftovers_removed += remove_attempt_files(
                self.storage, self.kind, *unit_key, self.attempt, outcome.record
            )
            return False
        self.finished.add(unit_key)
        self.keeper.drop_committed(self.kind, *unit_key)
        record = outcome.record
        self.committed_now[unit_key] = record
        self.report.leftovers_removed += remove_leftovers(self.storage, record)
        self.report.units_done += 1
        self.report.samples += record.n_input
        self.report.samples_stored += record.n_stored
        self.report.rows.update({k: n for k, n in record.rows.items() if k != "errors"})
        self.report.errors_by_reason.update(str(e["reason"]) for e in c.errors.values())
        self.report.bytes_written += sum(f.size for f in record.files)
        if c.note:
            self.report.shard_notes.append(f"{row['source']}/{row['shard']}: {c.note}")
        return True

    def fail(self, unit_key: Key, shard: str, reason: str, detail: str) -> None:
        self.finished.add(unit_key)
        self.collectors.pop(unit_key, None)
        self.keeper.release((self.kind, *unit_key))
        self.report.units_failed.append(
            dict(source=unit_key[0], shard=shard, unit=unit_key[1], reason=reason, detail=detail)
        )

    def read_failed(self, row: dict, shard_key: Key) -> None:
        """The read of a shard stopped in the row's unit: that unit and the shard's later ones fail;
        earlier units were read to their end and commit as their parts arrive."""
        start = self.failed_at[shard_key] = int(row["unit_start"])
        what = f"{row['reason']}: {row['detail']}"
        if (row["source"], row["unit"]) not in self.finished:
            self.fail((row["source"], row["unit"]), row["shard"], str(row["reason"]), str(row["detail"]))
        for key, c in list(self.collectors.items()):
            if (key[0], c.shard.name) == shard_key and c.unit_start > start:
                self.fail(key, row["shard"], "shard_failed", f"its shard's read stopped in {row['unit']} ({what})")
        if self.shards[shard_key].unit_size:
            self.report.units_failed.append(
                dict(
                    source=row["source"],
                    shard=row["shard"],
                    unit=f"{row['shard']}.p*",
                    reason="shard_failed",
                    detail=f"units after {row['unit']} not read ({what})",
                )
            )

    def report_lost_batches(self, by_range: set[Key], streamed: set[Key], held_back: set[Key]) -> None:
        """Batches lost for good (their actor died past the retries): units some rows of which never
        came, and shards whose last units left no row at all. Their claims are released."""
        open_shards = {(source, c.shard.name) for (source, _), c in self.collectors.items()}
        for (source, unit), c in list(self.collectors.items()):
            arrived = len(c.covered | c.errors.keys())
            expected = c.n_in_unit if c.n_in_unit is not None else "?"
            self.fail((source, unit), c.shard.name, "incomplete", f"{arrived} of {expected} samples arrived")
        for source, unit in by_range - self.finished - held_back:
            self.fail(
                (source, unit),
                unit.rsplit(".", 1)[0],
                "incomplete",
                "no row of it arrived (batches lost past their retries)",
            )
        for key in streamed - self.read_to_end.keys() - self.failed_at.keys():
            shard = self.shards[key]
            name = key[1] if not shard.unit_size else stream_claim_name(key[1])
            if key in open_shards or (key[0], name) in held_back or (not shard.unit_size and key in self.finished):
                continue
            self.report.units_failed.append(
                dict(
                    source=key[0],
                    shard=key[1],
                    unit=key[1] if not shard.unit_size else f"{key[1]}.p*",
                    reason="incomplete",
                    detail="no row of its last units arrived (batches lost past their retries)",
                )
            )

    # -- after the stream: units other jobs held ---------------------------------------------------

    def wait_for_claimed(self) -> None:
        """Until no task is held back: each poll, a task whose blocking claim is gone (committed,
        released or expired, judged by the store's clock) is planned again and run in another round."""
        # A few requests per waiting task a poll: cheap next to the minutes a unit takes.
        poll, told = min(max(self.lease_s / 30, 0.5), 10.0), 0
        while self.waiting:
            if len(self.waiting) != told:
                told = len(self.waiting)
                print(
                    f"{self.kind}: waiting on {told} claims of other jobs: their units commit there, or run "
                    f"here once a claim is released or {self.lease_s:.0f} s old",
                    flush=True,
                )
            time.sleep(poll)
            now = self.storage.store_now()
            runnable: list[dict] = []
            for key, task in list(self.waiting.items()):
                if self.take_over(ShardTask(**task), now):
                    del self.waiting[key]
                    runnable += self.replan(ShardTask(**task), task)
            if runnable:
                self.run_round(runnable)

    def take_over(self, t: ShardTask, now: float) -> bool:
        """Whether the claims holding a task back are gone, judged here: then this job takes them.
        The driver judges, not the read task: a claim whose driver died on this machine looks live
        from a worker on another (it cannot tell that process is gone)."""
        if t.blocking_holder(self.storage, now) is not None:
            return False
        t.clear_lapsed_shard_claim(self.storage, now)
        for name in t.claim_names():
            got = take_claim(self.storage, self.kind, t.source, name, self.attempt, self.lease_s, t.driver)
            if not isinstance(got, Claim):
                return False
            self.keeper.hold(got)
            self.report.claims_taken_over += bool(got.took_over)
        return True

    def replan(self, t: ShardTask, task: dict) -> list[dict]:
        """The read tasks still needed for a task that was held back: none for units committed
        meanwhile (by the job that held them), the same task for units that were not, and for a
        streamed shard the plan of its pending units now (its tar index may exist by now)."""
        shard = self.shards[(t.source, t.shard)]
        records = TargetStore(self.storage).shard_commits(self.kind, t.source, t.shard)
        for r in records:
            self.finished_elsewhere((r.source, r.unit), r)
        if t.read_units is not None or not t.unit_size:
            units = t.claim_names()
            return [] if all((t.source, u) in self.finished for u in units) else [task]
        done = committed_unit_nos(shard, records)
        return [] if done is None else read_tasks(self.storage, self.kind, [(shard, done)], self.attempt, self.lease_s)


def _task_key(task: dict) -> tuple:
    return task["source"], tuple(ShardTask(**task).claim_names())
