"""The driver's side of the commit protocol: a unit's record, created last, and the clean-up.

    outcome = commit_unit(storage, "clip", collector, policy_hash, attempt)  # errors table, then the record
    if outcome.won:
        remove_leftovers(storage, outcome.record)     # the unit's files its record does not list
    else:                                             # another job committed the unit first
        remove_attempt_files(storage, "clip", source, unit, attempt)
    remove_replayed_parts(storage, "clip", records)   # once the stream has ended, again

The record lists the accepted parts (disjoint sample sets that, with the errors, cover the unit)
and every file of them with the size and sha256 the actor measured. It is created only if the unit
has none, and read back: until a record exists the unit does not count, and once one does it is
final. So nothing is removed before a committed record that does not list it has been read back
from the store; files of uncommitted units are left alone (another job may be writing them) and
`python -m pipeline.validate --gc` removes those older than its grace period.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from pipeline.materialize.sources import InputShard
from pipeline.materialize.units import UnitCollector
from storage_schemas.plumbing.errors import StoreError
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.store import READ_THREADS, layout
from storage_schemas.store.commit import CommitRecord, create_commit, input_change, read_commit
from storage_schemas.store.root import StorageFailure, StoreRoot
from storage_schemas.store.tables import ERRORS_SCHEMA, parquet_bytes

log = logging.getLogger(__name__)


class PartsMissing(StoreError):
    """Files of the unit's parts are gone before its record was created: it must not commit."""


@dataclass(frozen=True)
class CommitOutcome:
    record: CommitRecord | None  # the unit's record as read back; None when it does not parse (damaged)
    won: bool  # the record is this attempt's


def commit_unit(storage: StoreRoot, kind: str, c: UnitCollector, policy_hash: str, attempt: str) -> CommitOutcome:
    """Write the unit's errors table (if any, named for the attempt) and, last, create its commit record."""
    parts = c.ordered_parts()
    files = [f for p in parts for f in p.files]
    errors = c.error_rows(kind)
    if errors:
        table = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
        rel = layout.errors_path(kind, c.shard.source, c.unit, attempt)
        files.append(storage.write_bytes(rel, parquet_bytes(table)))
    record = CommitRecord(
        kind=kind,
        source=c.shard.source,
        shard=c.shard.name,
        unit=c.unit,
        input=c.input_ref(),
        n_input=c.n_in_unit,
        n_stored=len(c.covered),
        n_errors=len(errors),
        rows={**c.rows(), "errors": len(errors)},
        files=files,
        policy_hash=policy_hash,
        parts=[p.name for p in parts],
        attempt_id=attempt,
    )
    kill_point("after_data_before_commit", c.unit)
    # A driver paused longer than `validate --gc --grace` finds its parts removed as an uncommitted
    # unit's: a record listing them would commit files that are not there.
    present = set(unit_paths(storage, kind, c.shard.source, c.unit))
    missing = [f.path for f in files if f.path not in present]
    if missing:
        # Or another job committed the unit and removed this attempt's files as unlisted: a race lost.
        stored = read_commit(storage, kind, c.shard.source, c.unit)
        if stored is not None:
            return CommitOutcome(stored, won=False)
        raise PartsMissing(
            f"{len(missing)} of its {len(files)} files are gone before its commit ({missing[0]} ...); "
            "`validate --gc` with a --grace shorter than this unit was in flight removes them"
        )
    stored = create_commit(storage, record)
    return CommitOutcome(stored, stored is not None and stored.attempt_id == attempt)


def unit_paths(storage: StoreRoot, kind: str, source: str, unit: str) -> list[str]:
    """Every file the unit may own: its part folder's files and its errors tables."""
    old_errors = layout.errors_path(kind, source, unit)
    return (
        storage.list_files(layout.unit_dir(kind, source, unit))
        + storage.list_files(old_errors[: -len(".parquet")])
        + ([old_errors] if storage.exists(old_errors) else [])
    )


def remove_quietly(storage: StoreRoot, paths: list[str]) -> int:
    """Remove files no record lists; one that will not go stays for `validate --gc` (logged).
    Returns how many went."""
    removed = 0
    for rel in paths:
        try:
            storage.remove(rel)
            removed += 1
        except (StorageFailure, OSError) as e:
            log.warning(
                "%s: not removed (%s); `python -m pipeline.validate --gc` removes it later", storage.url_of(rel), e
            )
    return removed


def remove_leftovers(storage: StoreRoot, record: CommitRecord) -> int:
    """Remove the unit's files its record (committed, read back) does not list: dropped duplicates,
    killed attempts, other jobs' attempts at the unit (theirs can never commit now)."""
    keep = {f.path for f in record.files}
    try:
        paths = unit_paths(storage, record.kind, record.source, record.unit)
    except (StorageFailure, OSError) as e:
        log.warning(
            "unit %s/%s/%s: leftovers not listed (%s); `validate --gc` removes them later",
            record.kind,
            record.source,
            record.unit,
            e,
        )
        return 0
    return remove_quietly(storage, [p for p in paths if p not in keep])


def record_in_the_way(record: CommitRecord | None, policy_hash: str, shard: InputShard) -> str | None:
    """Why a record found in a unit's place cannot stand for this job's unit, or None: it does not
    parse, it was made under another policy (readers ignore it), or from another cut of the shard
    or another input. Records are never overwritten, so the unit fails saying how to clear it."""
    if record is None:
        why = "a commit record that does not parse"
    elif record.policy_hash != policy_hash:
        why = "a commit record made under another policy (readers ignore it)"
    elif record.input.unit_size != (shard.unit_size or 0) or input_change(record.input, shard.size, shard.etag):
        why = f"a commit record of another cut or input ({record.input})"
    else:
        return None
    return (
        f"{why} is in the way; `python -m pipeline.validate ROOT --uncommit-damaged` moves it aside, "
        "then a rerun redoes the unit"
    )


def remove_attempt_files(
    storage: StoreRoot, kind: str, source: str, unit: str, attempt: str, record: CommitRecord
) -> int:
    """After losing a commit race (another job's `record`, read back, holds the unit): remove this
    attempt's files of the unit, and only those (never one the record lists)."""
    try:
        paths = unit_paths(storage, kind, source, unit)
    except (StorageFailure, OSError) as e:
        log.warning("unit %s/%s/%s: files not listed (%s); `validate --gc` removes them later", kind, source, unit, e)
        return 0
    keep = {f.path for f in record.files}
    return remove_quietly(storage, [p for p in paths if layout.attempt_of(p) == attempt and p not in keep])


def remove_replayed_parts(storage: StoreRoot, kind: str, records: list[CommitRecord]) -> int:
    """After the stream has ended: remove the files of this run's committed units their records do not list.

    When an actor dies, Ray replays each of its unfinished generator tasks from the start and drops
    the outputs the first attempt had already delivered (`ray.exceptions.
    StreamingGeneratorReplayInconsistentError` guards that replay). A task whose batches were all
    delivered, and its unit committed, but that had not yet finished when a batch running beside it
    killed the actor, writes its parts again and no row ever tells the driver: files that can land
    after `remove_leftovers` ran. Once the stream has ended no task of the job is running, so one
    listing per source then finds every one of them.
    """
    keep: dict[tuple[str, str], set[str]] = {(r.source, r.unit): {f.path for f in r.files} for r in records}
    sources = sorted({source for source, _ in keep})

    def unlisted(rel: str, source: str) -> bool:
        head = rel.split("/")  # KIND/SOURCE/UNIT/FILE; errors tables are the driver's own writes
        return len(head) > 3 and (source, head[2]) in keep and rel not in keep[(source, head[2])]

    try:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            listings = list(pool.map(lambda source: storage.list_files(f"{kind}/{source}"), sources))
    except (StorageFailure, OSError) as e:
        log.warning("%s units: replayed parts not listed (%s); `validate --gc` removes them later", kind, e)
        return 0
    return remove_quietly(
        storage, [rel for source, files in zip(sources, listings) for rel in files if unlisted(rel, source)]
    )


def remove_part_files(storage: StoreRoot, row: dict, record: CommitRecord) -> int:
    """Remove the files of a part that reached the driver after its unit was committed without it."""
    keep = {f.path for f in record.files}
    return remove_quietly(storage, [f["path"] for f in json.loads(row["part_files"]) if f["path"] not in keep])
