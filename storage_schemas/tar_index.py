"""Tar indexes: where each member of an input tar lies, so that a unit's samples are read with
ranged requests instead of streaming every earlier sample of a 10 GB SA-1B tar.

    ROOT/_tar_index/KIND/SOURCE/SHARD.parquet    one row per member, in tar order:
        sample_index int32   the sample's position in the shard (webdataset grouping, as tar_samples)
        key, ext             the sample key and the member's extension (`jpg`, `json` ...)
        offset, size int64   where the member's data starts in the tar, and its length

The schema metadata names the tar it describes (`url`, `size`, `etag`): an index whose tar
changed since is stale and not used. The read task that streams a shard to its end writes its
index (a pure function of the tar, so writing it twice is harmless); later reads of single units
(a rerun, the student, transfer-set retrieval) use it:

    index = read_tar_index(storage, "sam", "sa1b", "sa_000001", size, etag)   # None: absent or stale
    for sample in iter_indexed_samples(url, options, index, 1000, 2000): ...
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage_schemas.layout import tar_index_path
from storage_schemas.storage import Storage
from storage_schemas.tables import parquet_bytes
from storage_schemas.tar_samples import TarSample

TAR_INDEX_SCHEMA = pa.schema([
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("key", pa.string(), nullable=False),
    pa.field("ext", pa.string(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
])
READ_BLOCK = 1 << 22  # bytes per ranged request: adjacent members come in one GET


@dataclass
class TarIndex:
    """A tar's members, by sample."""

    url: str
    size: int
    etag: str | None
    table: pa.Table  # TAR_INDEX_SCHEMA

    @property
    def n_samples(self) -> int:
        column = self.table.column("sample_index")
        return int(column[-1].as_py()) + 1 if len(column) else 0

    def members(self, start: int, stop: int) -> pa.Table:
        """The member rows of samples [start, stop), in tar order."""
        index = self.table.column("sample_index").to_numpy()
        lo, hi = np.searchsorted(index, [start, stop])
        return self.table.slice(int(lo), int(hi - lo))

    def to_parquet(self) -> bytes:
        meta = {"url": self.url, "size": str(self.size), "etag": json.dumps(self.etag)}
        return parquet_bytes(self.table.replace_schema_metadata(meta))


def index_rows(sample: TarSample) -> list[tuple]:
    """A sample's rows of the index, from the spans `iter_tar_samples` filled in."""
    return [(sample.index, sample.key, ext, off, n) for ext, (off, n) in sample.spans.items()]


def make_tar_index(url: str, size: int, etag: str | None, rows: list[tuple]) -> TarIndex:
    columns = list(zip(*rows)) if rows else [[] for _ in TAR_INDEX_SCHEMA]
    return TarIndex(url, size, etag, pa.table(dict(zip(TAR_INDEX_SCHEMA.names, columns)), schema=TAR_INDEX_SCHEMA))


def write_tar_index(storage: Storage, kind: str, source: str, shard: str, index: TarIndex) -> None:
    storage.write_bytes(tar_index_path(kind, source, shard), index.to_parquet())


def read_tar_index(storage: Storage, kind: str, source: str, shard: str, size: int,
                   etag: str | None) -> TarIndex | None:
    """The stored index of a shard, or None when there is none or it describes another version
    of the tar (size or ETag differ)."""
    rel = tar_index_path(kind, source, shard)
    if not storage.exists(rel):
        return None
    with storage.fs.open(storage.full(rel), "rb") as f:
        table = pq.read_table(f)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if int(meta.get("size", -1)) != size or json.loads(meta.get("etag", "null")) != etag:
        return None
    return TarIndex(meta["url"], size, etag, table.replace_schema_metadata(None))


def iter_indexed_samples(url: str, storage_options: dict[str, Any] | None, index: TarIndex, start: int,
                         stop: int) -> Iterator[TarSample]:
    """Samples [start, stop) of the tar at `url`, read from their offsets: one forward pass over
    that byte range in READ_BLOCK requests, nothing before it."""
    members = index.members(start, stop).to_pylist()
    if not members:
        return
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    with fs.open(path, "rb", block_size=READ_BLOCK) as f:
        current: TarSample | None = None
        for m in members:
            if current is None or m["sample_index"] != current.index:
                if current is not None:
                    yield current
                current = TarSample(m["sample_index"], m["key"])
            f.seek(m["offset"])
            data = f.read(m["size"])
            if len(data) != m["size"]:
                raise ValueError(f"{url} ends at {m['offset'] + len(data)}, inside member {m['key']}.{m['ext']} "
                                 f"(the index says {m['size']} bytes at {m['offset']}): truncated?")
            current.members[m["ext"]] = data
            current.spans[m["ext"]] = (m["offset"], m["size"])
        yield current
