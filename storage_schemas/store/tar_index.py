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
    images = read_spans(options, [(url, offset, size), ...])   # scattered members, coalesced requests

A store made before tar indexes existed has none: `scan_tar_index` builds one by streaming the tar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage_schemas.pixels.tar_samples import TarSample, iter_tar_samples
from storage_schemas.store.layout import tar_index_path
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tables import parquet_bytes

TAR_INDEX_SCHEMA = pa.schema(
    [
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("ext", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
    ]
)
READ_BLOCK = 1 << 22  # bytes per ranged request: adjacent members come in one GET
# Scattered reads (the student's): a gap up to HOLE_BYTES between wanted members is read through
# rather than paid for with another request (an S3 GET costs ~20-50 ms, 64 KiB ~0.5 ms at
# 100 MB/s; S3 serves ~5,500 GET/s per prefix), and no request exceeds MAX_REQUEST bytes.
HOLE_BYTES = 64 << 10
MAX_REQUEST = 16 << 20


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


def write_tar_index(storage: StoreRoot, kind: str, source: str, shard: str, index: TarIndex) -> None:
    storage.write_bytes(tar_index_path(kind, source, shard), index.to_parquet())


def read_tar_index(
    storage: StoreRoot, kind: str, source: str, shard: str, size: int, etag: str | None
) -> TarIndex | None:
    """The stored index of a shard, or None when there is none or it describes another version
    of the tar (size or ETag differ)."""
    rel = tar_index_path(kind, source, shard)
    if not storage.exists(rel):
        return None
    table = pq.read_table(pa.BufferReader(storage.fs.cat_file(storage.full(rel))))  # one request
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if int(meta.get("size", -1)) != size or json.loads(meta.get("etag", "null")) != etag:
        return None
    return TarIndex(meta["url"], size, etag, table.replace_schema_metadata(None))


def scan_tar_index(url: str, storage_options: dict[str, Any] | None, size: int, etag: str | None) -> TarIndex:
    """The index of a tar that has none stored, by streaming it once (no member is kept)."""
    rows = [r for s in iter_tar_samples(url, storage_options, lambda i: False) for r in index_rows(s)]
    return make_tar_index(url, size, etag, rows)


def coalesce(spans: np.ndarray, hole: int = HOLE_BYTES, max_request: int = MAX_REQUEST) -> list[tuple[int, int]]:
    """spans: int64 [n, 2] of (offset, size), sorted by offset -> (start, stop) byte ranges, one
    per run of spans whose gaps are at most `hole` bytes, each at most `max_request` long (a
    single larger span is one request of its own)."""
    requests: list[tuple[int, int]] = []
    for offset, size in spans.tolist():
        if requests and offset - requests[-1][1] <= hole and offset + size - requests[-1][0] <= max_request:
            requests[-1] = (requests[-1][0], max(requests[-1][1], offset + size))
        else:
            requests.append((offset, offset + size))
    return requests


def read_spans(
    storage_options: dict[str, Any] | None, spans: list[tuple[str, int, int]], runs: list[Any] | None = None
) -> list[bytes]:
    """The bytes of each (url, offset, size) span, in the order given. Spans of one file and one
    run (`runs[i]`, if given: spans of different runs are never merged, so a gap is only read
    through when the caller knows nothing in it is wanted later) are fetched with the ranged
    requests of `coalesce`; all requests on one filesystem go out in one `cat_ranges` call
    (concurrently, on object stores)."""
    out: list[bytes] = [b""] * len(spans)
    by_url: dict[tuple[str, Any], list[int]] = {}
    for i, (url, _, _) in enumerate(spans):
        by_url.setdefault((url, runs[i] if runs is not None else None), []).append(i)
    by_fs: dict[int, tuple[Any, list[tuple[str, str, list[int]]]]] = {}
    for (url, _), items in by_url.items():
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        by_fs.setdefault(id(fs), (fs, []))[1].append((url, path, items))
    for fs, files in by_fs.values():
        plan = []  # (url, requests, items sorted by offset)
        for url, path, items in files:
            items = sorted(items, key=lambda i: spans[i][1])
            plan.append((url, path, coalesce(np.array([spans[i][1:] for i in items], dtype=np.int64)), items))
        blobs = fs.cat_ranges(
            [p for _, p, rs, _ in plan for _ in rs],
            [a for *_, rs, _ in plan for a, _ in rs],
            [b for *_, rs, _ in plan for _, b in rs],
        )
        at = 0
        for url, _, requests, items in plan:
            r = 0
            for i in items:
                offset, size = spans[i][1], spans[i][2]
                while r + 1 < len(requests) and offset >= requests[r][1]:
                    r += 1
                blob, start = blobs[at + r], requests[r][0]
                if isinstance(blob, Exception):
                    raise blob
                data = blob[offset - start : offset - start + size]
                if len(data) != size:
                    raise ValueError(
                        f"{url} ends at {start + len(blob)}, inside the member the index puts at "
                        f"bytes {offset}-{offset + size}: truncated?"
                    )
                out[i] = bytes(data)
            at += len(requests)
    return out


def iter_indexed_samples(
    url: str, storage_options: dict[str, Any] | None, index: TarIndex, start: int, stop: int
) -> Iterator[TarSample]:
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
                raise ValueError(
                    f"{url} ends at {m['offset'] + len(data)}, inside member {m['key']}.{m['ext']} "
                    f"(the index says {m['size']} bytes at {m['offset']}): truncated?"
                )
            current.members[m["ext"]] = data
            current.spans[m["ext"]] = (m["offset"], m["size"])
        yield current
