"""Which read tasks a job runs: a shard streamed from its start, or its pending units by range.

A shard cut into units whose tar index is in the store (an earlier job streamed it to the end)
gets one read task per pending unit, each reading only its unit's byte range: a rerun after a
crash reads what it redoes, and the units of one large tar (SA-1B: ~11 units of ~1 GB) are read
in parallel. Any other shard is streamed by one task, which writes the index when it reaches
the end. The planner lists each source's indexes once and reads those it needs concurrently.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.materialize.sources import InputShard
from pipeline.materialize.units import shard_task
from storage_schemas.store.layout import TAR_INDEX_DIR
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tar_index import read_tar_index

INDEX_READ_THREADS = 32


def read_tasks(
    storage: StoreRoot, kind: str, pending: list[tuple[InputShard, list[int]]], attempt: str = "", lease_s: float = 0.0
) -> list[dict[str, Any]]:
    """pending: (shard, the numbers of its committed units) for every shard with work left -> read task rows, which
    claim their units for `attempt` (pipeline.materialize.claims) when one is given."""
    listed: dict[str, set[str]] = {}
    for source in sorted({s.source for s, _ in pending}):
        files = storage.list_files(f"{TAR_INDEX_DIR}/{kind}/{source}")
        listed[source] = {f.rsplit("/", 1)[-1][: -len(".parquet")] for f in files if f.endswith(".parquet")}
    cut = [(s, done) for s, done in pending if s.unit_size and s.name in listed[s.source]]

    def samples_in(shard: InputShard) -> int | None:
        index = read_tar_index(storage, kind, shard.source, shard.name, shard.size, shard.etag)
        return index.n_samples if index is not None else None

    with ThreadPoolExecutor(INDEX_READ_THREADS) as pool:
        counts = dict(zip([s.url for s, _ in cut], pool.map(samples_in, [s for s, _ in cut])))
    tasks = []
    for shard, done in pending:
        n = counts.get(shard.url)
        if n is None:
            tasks.append(shard_task(shard, done, storage, True, None, attempt, lease_s))
            continue
        for unit_no in range(max(1, math.ceil(n / shard.unit_size))):
            if unit_no not in done:
                tasks.append(shard_task(shard, done, storage, False, [unit_no], attempt, lease_s))
    return tasks
