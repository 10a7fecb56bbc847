"""The driver's side of the commit protocol: a unit's record, written last, and the leftovers.

    record = commit_unit(storage, "clip", collector, policy_hash)   # errors table, then the record
    remove_leftovers(storage, record)                               # the unit's files it does not list
    remove_replayed_parts(storage, "clip", records)                 # once the stream has ended, again

The record lists the accepted parts (disjoint sample sets that, with the errors, cover the
unit) and every file of them with the size and sha256 the actor measured. Until the record
exists the unit does not count, so a crash anywhere before it leaves at most files readers ignore;
a part that no record lists (a dropped duplicate, an attempt killed after writing) is removed
after the unit commits, and `python -m pipeline.validate --gc` removes any that remain.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from pipeline.sources import InputShard
from pipeline.units import UnitCollector
from storage_schemas.plumbing.faults import kill_point
from storage_schemas.store import READ_THREADS, layout
from storage_schemas.store.commit import CommitRecord, write_commit
from storage_schemas.store.root import StorageFailure, StoreRoot
from storage_schemas.store.tables import ERRORS_SCHEMA, parquet_bytes

log = logging.getLogger(__name__)


def commit_unit(storage: StoreRoot, kind: str, c: UnitCollector, policy_hash: str) -> CommitRecord:
    """Write the unit's errors table (if any) and, last, its commit record."""
    parts = c.ordered_parts()
    files = [f for p in parts for f in p.files]
    errors = c.error_rows(kind)
    if errors:
        table = pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)
        files.append(storage.write_bytes(layout.errors_path(kind, c.shard.source, c.unit), parquet_bytes(table)))
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
    )
    kill_point("after_data_before_commit")
    write_commit(storage, record)
    return record


def unit_paths(storage: StoreRoot, kind: str, source: str, unit: str) -> list[str]:
    """Every file the unit may own: its part folder's files and its errors table."""
    errors = layout.errors_path(kind, source, unit)
    return storage.list_files(layout.unit_dir(kind, source, unit)) + ([errors] if storage.exists(errors) else [])


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
    """Remove the unit's files its record does not list (dropped duplicates, killed attempts)."""
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


def remove_part_files(storage: StoreRoot, row: dict) -> int:
    """Remove the files of a part that reached the driver after its unit was committed without it."""
    return remove_quietly(storage, [f["path"] for f in json.loads(row["part_files"])])


def remove_pending_leftovers(
    storage: StoreRoot, kind: str, shards: list[InputShard], committed: set[tuple[str, str]]
) -> list[str]:
    """Before a run: remove the files of this job's units that have no record (earlier attempts).

    A file belongs to a unit by its path: `KIND/SOURCE/UNIT/...` or `_errors/KIND/SOURCE/UNIT.parquet`,
    UNIT one of this job's unit names (a shard's name, or `SHARD.pNNN` for a shard cut into
    parts). One recursive listing per source (its data and errors prefixes) runs concurrently,
    then the removals, concurrently too: on object storage each is a round trip of tens of ms.
    """
    whole = {(s.source, s.name) for s in shards if not s.unit_size}
    parted = {(s.source, s.name) for s in shards if s.unit_size}
    sources = sorted({s.source for s in shards})

    def listing(source: str) -> list[str]:
        return storage.list_files(f"{kind}/{source}") + storage.list_files(f"{layout.ERRORS_DIR}/{kind}/{source}")

    def pending(rel: str, source: str) -> bool:
        head = rel.split("/")
        if head[0] == layout.ERRORS_DIR:
            unit = head[3][: -len(".parquet")] if len(head) == 4 and head[3].endswith(".parquet") else None
        else:
            unit = head[2] if len(head) > 3 else None  # a file directly under SOURCE/ is no part
        if unit is None or (source, unit) in committed:
            return False
        shard, _, part = unit.rpartition(".p")
        return (source, unit) in whole or ((source, shard) in parted and part.isdigit())

    with ThreadPoolExecutor(READ_THREADS) as pool:
        stale = [
            rel for source, files in zip(sources, pool.map(listing, sources)) for rel in files if pending(rel, source)
        ]
        list(pool.map(storage.remove, stale))
    return stale
