"""Transfer sets: `subsets/NAME.parquet` (what was selected) and `subsets/NAME.json` (how), written
by `pipeline.transfer_set`, read by the trainer (`data.clip.subset: NAME`).

    subset = read_subset(storage, "pets")
    subset.views_of(SampleId("cc12m", "00042", "000420017"))   # (0, 3): the sample trains on views 0 and 3
    subset.manifest["held_out"], subset.manifest["teacher"]["weights_sha256"]

One row per selected gallery view: `source, shard, unit, key, sample_index` (the sample and where it
is committed), `view` (the stored view retrieved), `query_id` (its row in the query set), `similarity`
(float32 cosine between the two teacher embeddings), `rank` (0 = the query's closest selected view).
A sample retrieved through two views has two rows and trains on both.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage_schemas.plumbing.errors import StoreError
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store import layout
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tables import parquet_bytes

SUBSET_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("view", pa.int16(), nullable=False),
        pa.field("query_id", pa.int32(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)


SHARDS_CACHED = 256  # shards' {key: views} lookups a Subset keeps built (the trainer reads a few at a time)


@dataclass
class Subset:
    name: str
    table: pa.Table  # SUBSET_SCHEMA rows, sorted by (source, shard, key, view)
    manifest: dict[str, Any]

    def __post_init__(self):
        self.table = self.table.sort_by([(c, "ascending") for c in ("source", "shard", "key", "view")])
        source, shard = (self.table.column(c).to_pylist() for c in ("source", "shard"))
        # Row ranges per shard, and per-shard lookups built on demand: a subset of 10M rows never
        # becomes 10M Python objects in every loader worker.
        self._ranges: dict[tuple[str, str], tuple[int, int]] = {}
        for i, k in enumerate(zip(source, shard)):
            lo, _ = self._ranges.get(k, (i, i))
            self._ranges[k] = (lo, i + 1)
        self.units = set(zip(source, self.table.column("unit").to_pylist()))
        self._shard_views = functools.lru_cache(SHARDS_CACHED)(self._build_shard)

    def _build_shard(self, source: str, shard: str) -> dict[str, tuple[int, ...]]:
        lo, hi = self._ranges.get((source, shard), (0, 0))
        rows = self.table.slice(lo, hi - lo)
        out: dict[str, tuple[int, ...]] = {}
        for key, view in zip(rows.column("key").to_pylist(), rows.column("view").to_pylist()):
            out[key] = (*out.get(key, ()), int(view))
        return out

    def views_of(self, sample: SampleId) -> tuple[int, ...]:
        """The stored views `sample` trains on, ascending; () for a sample not in the subset."""
        return self._shard_views(sample.source, sample.shard).get(sample.key, ())

    def __len__(self) -> int:
        return self.table.num_rows

    def __getstate__(self) -> dict:
        return {"name": self.name, "table": self.table, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def write_subset(storage: StoreRoot, name: str, table: pa.Table, manifest: dict[str, Any]) -> None:
    """The table, then the manifest (a reader finds the table a manifest names)."""
    storage.write_bytes(layout.subset_path(name), parquet_bytes(table.cast(SUBSET_SCHEMA)))
    storage.write_bytes(layout.subset_path(name, ".json"), json.dumps(manifest, indent=2, sort_keys=True).encode())


def subset_names(storage: StoreRoot) -> list[str]:
    return sorted(
        p.rsplit("/", 1)[1][: -len(".json")] for p in storage.list_files(layout.SUBSETS_DIR) if p.endswith(".json")
    )


def read_subset(storage: StoreRoot, name: str) -> Subset:
    rel = layout.subset_path(name, ".json")
    if not storage.exists(rel):
        raise StoreError(
            f"store {storage.url} has no subset '{name}' (has: {', '.join(subset_names(storage)) or 'none'}; "
            "python -m pipeline.transfer_set makes them)"
        )
    manifest = json.loads(storage.read_bytes(rel))
    table = pq.read_table(io.BytesIO(storage.read_bytes(layout.subset_path(name))))
    return Subset(name, table, manifest)
