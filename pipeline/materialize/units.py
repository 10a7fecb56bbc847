"""What the CLIP and SAM jobs share: shard tasks, the streaming read loop with its per-unit `end`
rows, and the driver's per-unit collection of the parts teacher actors wrote.

Row protocol (one Ray row per sample into the teacher stage, every kind):
    source, shard, unit, unit_start   where the sample belongs
    status      ok | error | end | unit_failed (the read failed) | part | teacher_failed
                | claim (this attempt holds a claim: detail is the claim's JSON)
                | claimed (another live job holds one: detail {claim, holder})
                | committed (another job committed the unit since the plan)
    sample_index, key, members        the sample (index within its unit)
    reason, detail                    an error's reason, an end row's note, a failure's message
    n_in_unit, shard_samples          end rows: samples in the unit; samples in the shard (-1 unknown)
    storage_retries                   JSON {operation: transient store errors retried} (the read
                                      task's claims, commit checks and tar index, on its last row;
                                      a part's writes)
plus the kind's own columns (pixels, prompts ...) on the way in; on the way out the teacher
stage replaces `ok` rows by `part` rows (pipeline.materialize.parts).
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.materialize.claims import Holder, clear_claim, holder_of, take_claim, this_driver
from pipeline.materialize.sources import InputShard
from storage_schemas.pixels.tar_samples import TarSample, iter_tar_samples
from storage_schemas.plumbing.errors import ConfigError, StoreError
from storage_schemas.store.commit import CommitRecord, input_change, read_commit
from storage_schemas.store.layout import stream_claim_name, unit_name
from storage_schemas.store.root import FileEntry, StorageFailure, StoreRoot
from storage_schemas.store.tar_index import (
    TarIndex,
    index_rows,
    iter_indexed_samples,
    make_tar_index,
    read_tar_index,
    write_tar_index,
)

log = logging.getLogger(__name__)

OK, ERROR, END, UNIT_FAILED = "ok", "error", "end", "unit_failed"
PART, TEACHER_FAILED = "part", "teacher_failed"
CLAIM, CLAIMED, COMMITTED = "claim", "claimed", "committed"
PROTOCOL_COLUMNS = (
    "source",
    "shard",
    "unit",
    "unit_start",
    "status",
    "sample_index",
    "key",
    "members",
    "reason",
    "detail",
    "n_in_unit",
    "shard_samples",
    "storage_retries",
)


@dataclass(frozen=True)
class ShardTask:
    """One read task: a shard streamed from its start (its units are the shard or its cuts of
    `unit_size` samples, numbered 0, 1, ...), or with `read_units`, units read by range through
    the shard's tar index."""

    source: str
    shard: str
    url: str
    storage_options_json: str  # JSON: Ray rows carry plain values
    unit_size: int  # 0: the whole shard is one unit
    skip_units: list[int]  # numbers of the units already committed (only with unit_size)
    kind: str = "clip"
    size: int = 0  # the tar's size and ETag, which its index must match
    etag: str | None = None
    store_json: str = "[]"  # JSON [url, storage options] of the store that keeps tar indexes
    write_index: bool = False  # a stream read to the end writes the shard's tar index
    read_units: list[int] | None = None  # read these units by range; None: stream the shard
    attempt: str = ""  # the job attempt whose claims the task takes ("": none, a benchmark's read)
    lease_s: float = 0.0  # its claims' lease
    driver: str = ""  # the job's driver (pipeline.materialize.claims.this_driver), which the claims name

    def unit_no_of(self, index: int) -> int:
        return index // self.unit_size if self.unit_size else 0

    def unit_of(self, unit_no: int) -> str:
        return unit_name(self.shard, unit_no if self.unit_size else None)

    def base_row(self, status: str, unit_no: int) -> dict[str, Any]:
        return {
            "source": self.source,
            "shard": self.shard,
            "unit": self.unit_of(unit_no),
            "unit_start": unit_no * self.unit_size,
            "status": status,
            "sample_index": -1,
            "key": "",
            "members": "[]",
            "reason": "",
            "detail": "",
            "n_in_unit": 0,
            "shard_samples": -1,
            "storage_retries": "{}",
        }

    def pending(self, unit_no: int) -> bool:
        return unit_no in self.read_units if self.read_units is not None else unit_no not in self.skip_units

    def store(self) -> StoreRoot:
        url, options, single_writer = json.loads(self.store_json)
        return StoreRoot(url, options, single_writer=single_writer)

    def claim_names(self) -> list[str]:
        """What the task claims: the unit it reads by range (`read_tasks` makes one task a unit),
        else its shard's one unit, else (a shard cut into units but streamed) the whole shard."""
        if self.read_units is not None:
            return [self.unit_of(n) for n in self.read_units]
        return [stream_claim_name(self.shard) if self.unit_size else self.shard]

    def blocking_holder(self, store: StoreRoot, now: float | None = None) -> Holder | None:
        """Another job's live claim that covers this task's units: on one of them, or (for a
        shard read by range) on the whole shard, streamed by a job that had no tar index."""
        for name in self.claim_names() + self.shard_claim():
            holder = holder_of(store, self.kind, self.source, name, self.attempt, now)
            if holder is not None and holder.live:
                return holder
        return None

    def shard_claim(self) -> list[str]:
        """The whole-shard claim that also covers a read by range, as a list of none or one."""
        return [stream_claim_name(self.shard)] if self.read_units is not None else []

    def clear_lapsed_shard_claim(self, store: StoreRoot, now: float | None = None) -> None:
        """A whole-shard claim nobody holds any more, met by a read of one of its units: no job will
        release it, so it goes now rather than at `validate --gc`."""
        for name in self.shard_claim():
            holder = holder_of(store, self.kind, self.source, name, self.attempt, now)
            if holder is not None and not holder.live:
                clear_claim(store, self.kind, self.source, name, holder.generation)


def committed_unit_nos(shard: InputShard, committed: list[CommitRecord]) -> list[int] | None:
    """Numbers of a shard's units already committed, or None when every unit of it is committed.

    Refuses a shard whose committed units were cut with another `unit_size` (units would not line
    up: samples lost or stored twice) or whose input changed since (size or ETag).
    """
    for r in committed:
        if r.input.unit_size != (shard.unit_size or 0):
            raise ConfigError(
                f"source '{shard.source}': shard {shard.name} was committed with unit_size "
                f"{_unit_size_text(r.input.unit_size)}, this job has {_unit_size_text(shard.unit_size)}; "
                "keep the store's unit_size (or leave it unset)"
            )
        change = input_change(r.input, shard.size, shard.etag)
        if change:
            raise StoreError(
                f"input {shard.url} changed since unit {r.unit} was committed ({change}); "
                "restore it, or write to a new store"
            )
    if not shard.unit_size:
        return None if committed else []
    done = {r.input.sample_start // shard.unit_size for r in committed}
    total = next((r.input.shard_samples for r in committed if r.input.shard_samples is not None), None)
    if total is not None and done >= set(range(max(1, math.ceil(total / shard.unit_size)))):
        return None
    return sorted(done)


def _unit_size_text(unit_size: int | None) -> str:
    return str(unit_size) if unit_size else "0 (whole shards)"


def shard_task(
    shard: InputShard,
    skip_units: list[int],
    store: StoreRoot,
    write_index: bool,
    read_units: list[int] | None = None,
    attempt: str = "",
    lease_s: float = 0.0,
) -> dict[str, Any]:
    """A read task's row: the shard streamed (skipping `skip_units`; with `write_index`, writing
    its tar index into `store` at the end), or `read_units` by range through that index. With an
    `attempt`, the task claims what it reads first (pipeline.materialize.claims)."""
    return ShardTask(
        shard.source,
        shard.name,
        shard.url,
        json.dumps(shard.storage_options),
        shard.unit_size or 0,
        skip_units,
        shard.kind,
        shard.size,
        shard.etag,
        json.dumps([store.url, store.storage_options, store.single_writer]),
        write_index,
        read_units,
        attempt,
        lease_s,
        this_driver() if attempt else "",
    ).__dict__


BlankFn = Callable[[ShardTask, str, int], dict[str, Any]]  # (task, status, unit_no): an empty row of the kind
# (row, sample): fills the kind's columns of an `ok` row whose protocol fields are set, or makes it an error row
SampleFn = Callable[[dict[str, Any], TarSample], dict[str, Any]]


def read_shard(
    row: dict[str, Any],
    make_sample: SampleFn,
    columns: dict[str, Any],
    end_note: Callable[[ShardTask, dict, int], str] | None = None,
) -> Iterator[dict[str, Any]]:
    """One read task: a row per sample of each pending unit, an `end` row per unit with its
    count, or a `unit_failed` row if a unit cannot be read to its end. columns: the kind's own
    columns with their empty values, on every row (Ray's blocks need one schema)."""

    def blank(task: ShardTask, status: str, unit_no: int) -> dict[str, Any]:
        return {**task.base_row(status, unit_no), **columns}

    task = ShardTask(**row)
    store = task.store()  # one per task: its transient errors retried are reported on the task's last row
    last = None
    for out in _read_task(task, store, make_sample, blank, end_note):
        if last is not None:
            yield last
        last = out
    if last is not None:  # always a protocol row (end, unit_failed, claimed, committed): it reaches the driver
        last["storage_retries"] = json.dumps(dict(store.retries))
        yield last


def _read_task(task: ShardTask, store: StoreRoot, make_sample: SampleFn, blank: BlankFn, end_note):
    if task.attempt:
        rows, go_on = _claim(task, store, blank)
        yield from rows
        if not go_on:
            return
    options = json.loads(task.storage_options_json)
    if task.read_units is not None:
        try:
            index = read_tar_index(store, task.kind, task.source, task.shard, task.size, task.etag)
        except Exception as e:  # the stream below reads the same samples, only more bytes
            log.warning("%s: tar index unreadable (%s: %s); streaming the shard", task.url, type(e).__name__, e)
            index = None
        if index is not None:
            for unit_no in task.read_units:
                yield from _read_unit(
                    task,
                    options=options,
                    index=index,
                    unit_no=unit_no,
                    make_sample=make_sample,
                    blank=blank,
                    end_note=end_note,
                )
            return
    yield from _stream_shard(task, store, options, make_sample, blank, end_note)  # no index (or a stale one)


def _claim(task: ShardTask, store: StoreRoot, blank: BlankFn) -> tuple[list[dict[str, Any]], bool]:
    """Claim what the task reads before reading it. Returns the rows to send (a `claim` row per
    claim taken, for the driver to renew; a `claimed` row when another live job holds one; a
    `committed` row when another job committed the task's unit since the plan) and whether to read.
    Claims only spare duplicated work: where the store fails them, the task reads unclaimed and the
    commit decides, as it always does."""
    unit_no = task.read_units[0] if task.read_units is not None else 0
    rows = []

    def row(status: str, detail: str) -> dict[str, Any]:
        return {**blank(task, status, unit_no), "detail": detail}

    try:
        holder = task.blocking_holder(store) if task.read_units is not None else None
        if holder is None:
            task.clear_lapsed_shard_claim(store)
        for name in task.claim_names() if holder is None else []:
            got = take_claim(store, task.kind, task.source, name, task.attempt, task.lease_s, task.driver)
            if isinstance(got, Holder):
                holder = got
                break
            rows.append(row(CLAIM, got.to_json()))
        if holder is not None:
            return rows + [row(CLAIMED, json.dumps({"claims": task.claim_names(), "holder": holder.attempt}))], False
        units = [task.unit_of(n) for n in task.read_units] if task.read_units is not None else []
        units += [] if task.unit_size else [task.shard]
        done = [u for u in units if read_commit(store, task.kind, task.source, u) is not None]
    except (StorageFailure, OSError) as e:  # another job removing claims meanwhile, or the store failing
        log.warning("%s/%s: claims not taken (%s); read unclaimed, the commit decides", task.source, task.shard, e)
        return rows, True
    if done:
        return rows + [row(COMMITTED, json.dumps(done))], False
    return rows, True


def _sample_row(task: ShardTask, unit_no: int, sample: TarSample, blank: BlankFn, make_sample: SampleFn) -> dict:
    row = blank(task, OK, unit_no)
    row.update(
        sample_index=sample.index - unit_no * task.unit_size, key=sample.key, members=json.dumps(sample.member_names())
    )
    return make_sample(row, sample)


def _read_unit(
    task: ShardTask, *, options: dict, index: TarIndex, unit_no: int, make_sample: SampleFn, blank: BlankFn, end_note
) -> Iterator[dict[str, Any]]:
    """One unit by range: its samples, then its end row (which knows the shard's count)."""
    start = unit_no * task.unit_size
    stop = min(start + task.unit_size, index.n_samples)
    count = 0
    try:
        for sample in iter_indexed_samples(task.url, options, index, start, stop):
            count += 1
            yield _sample_row(task, unit_no, sample, blank, make_sample)
    except Exception as e:  # this unit fails; the task's other units are read by range all the same
        yield _failed_row(task, unit_no, e, blank)
        return
    end = blank(task, END, unit_no)
    note = end_note(task, options, index.n_samples) if end_note and stop == index.n_samples else ""
    end.update(n_in_unit=count, shard_samples=index.n_samples, detail=note)
    yield end


def _failed_row(task: ShardTask, unit_no: int, e: Exception, blank: BlankFn) -> dict[str, Any]:
    failed = blank(task, UNIT_FAILED, unit_no)
    failed.update(reason=type(e).__name__, detail=f"{e} (in {traceback.extract_tb(e.__traceback__)[-1].name})")
    return failed


def _stream_shard(
    task: ShardTask, store: StoreRoot, options: dict, make_sample: SampleFn, blank: BlankFn, end_note
) -> Iterator[dict[str, Any]]:
    """The shard from its start. Samples of units not pending are counted, not read; so are those
    of a unit another job committed while this task held the shard's claim (a `committed` row says
    so; only a job that read it by range can have). Read to its end, the shard's tar index is
    written where the task says so."""
    unit_no, count, total = 0, 0, 0
    index_rows_: list[tuple] = []
    committed_elsewhere: dict[int, bool] = {}

    def wanted(unit_no: int) -> bool:
        if not task.pending(unit_no):
            return False
        if task.attempt and task.unit_size and unit_no not in committed_elsewhere:
            try:
                committed_elsewhere[unit_no] = (
                    read_commit(store, task.kind, task.source, task.unit_of(unit_no)) is not None
                )
            except (StorageFailure, OSError) as e:  # read it anyway: the commit decides
                log.warning("%s: not known whether committed (%s); read all the same", task.unit_of(unit_no), e)
                committed_elsewhere[unit_no] = False
        return not committed_elsewhere.get(unit_no, False)

    def end_row(shard_samples: int, note: str = "") -> dict[str, Any]:
        end = blank(task, END, unit_no)
        if end_note and shard_samples >= 0:
            note = "; ".join(filter(None, [end_note(task, options, total), note]))
        end.update(n_in_unit=count, shard_samples=shard_samples, detail=note)
        return end

    try:
        for sample in iter_tar_samples(task.url, options, lambda i: wanted(task.unit_no_of(i))):
            index_rows_ += index_rows(sample)
            if task.unit_no_of(sample.index) != unit_no or sample.index == 0:
                if sample.index and wanted(unit_no):
                    yield end_row(-1)
                unit_no, count = task.unit_no_of(sample.index), 0
                if committed_elsewhere.get(unit_no):
                    yield {**blank(task, COMMITTED, unit_no), "detail": json.dumps([task.unit_of(unit_no)])}
            count += 1
            total += 1
            if wanted(unit_no):
                yield _sample_row(task, unit_no, sample, blank, make_sample)
    except Exception as e:  # the shard's read stops here; the driver fails this unit and the later ones
        # A task for given units (its index went stale) fails those, wherever the stream stopped.
        yield _failed_row(task, unit_no if task.read_units is None else task.read_units[0], e, blank)
        return
    note = ""
    if task.write_index:
        try:
            write_tar_index(
                store, task.kind, task.source, task.shard, make_tar_index(task.url, task.size, task.etag, index_rows_)
            )
        except Exception as e:  # the targets do not need it: later reads stream the shard instead
            note = f"tar index not written ({type(e).__name__}: {e})"
    yield end_row(total, note)  # also for a committed last unit: it tells the driver the shard was read to its end


@dataclass(frozen=True)
class Part:
    """A part file set a teacher actor wrote for a unit."""

    name: str
    samples: np.ndarray  # int32 sample indexes
    files: list[FileEntry]
    rows: dict[str, int]  # rows per table

    @property
    def first(self) -> int:
        return int(self.samples[0])  # the actor writes a part's samples in ascending order


@dataclass
class UnitCollector:
    """A unit's parts and error rows as they reach the driver. A part whose samples overlap an
    accepted part's or an error's (Ray re-ran its batch after a worker died) is dropped whole;
    error rows are deduplicated on sample index, and one for a sample a part holds is ignored."""

    shard: InputShard
    unit: str
    unit_start: int
    parts: list[Part] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)
    errors: dict[int, dict] = field(default_factory=dict)
    n_in_unit: int | None = None
    shard_samples: int | None = None
    note: str = ""

    def add(self, row: dict) -> None:
        if row["status"] == END:
            self.n_in_unit, self.note = int(row["n_in_unit"]), str(row["detail"])
            self.shard_samples = int(row["shard_samples"]) if row["shard_samples"] >= 0 else None
        elif row["status"] == PART:
            part = Part(
                str(row["part"]),
                np.frombuffer(row["part_samples"], np.int32),
                [FileEntry(**f) for f in json.loads(row["part_files"])],
                json.loads(row["part_rows"]),
            )
            samples = set(part.samples.tolist())
            if (
                not samples & self.covered and not samples & self.errors.keys()
            ):  # else dropped: its files go after the commit
                self.parts.append(part)
                self.covered |= samples
        elif row["status"] == ERROR and int(row["sample_index"]) not in self.covered:
            self.errors[int(row["sample_index"])] = row

    @property
    def complete(self) -> bool:
        return self.n_in_unit is not None and len(self.covered | self.errors.keys()) == self.n_in_unit

    def ordered_parts(self) -> list[Part]:
        return sorted(self.parts, key=lambda p: p.first)

    def rows(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self.parts:
            for name, n in p.rows.items():
                total[name] = total.get(name, 0) + n
        return total

    def error_rows(self, kind: str) -> list[dict]:
        """Rows of the errors table (storage_schemas.store.tables.ERRORS_SCHEMA)."""
        return [
            dict(
                kind=kind,
                source=self.shard.source,
                shard=self.shard.name,
                unit=self.unit,
                key=str(e["key"]),
                sample_index=int(e["sample_index"]),
                members=json.loads(str(e["members"])),
                reason=str(e["reason"]),
                detail=str(e["detail"]),
            )
            for _, e in sorted(self.errors.items())
        ]

    def input_ref(self):
        return self.shard.ref(self.unit_start, self.unit_start + self.n_in_unit, self.shard_samples)
