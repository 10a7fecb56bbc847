"""Where a committed unit's samples lie in its input tar, from the store's tar index, after checking
that the input is the one the unit was made from. The trainer, evaluation and the pipeline's
contact sheets read images this way.

    tar = unit_tar(store, record, storage_options)
    images = read_spans(storage_options, tar.image_spans(positions, keys))   # storage_schemas.store.tar_index
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from storage_schemas.pixels.tar_samples import IMAGE_EXTENSIONS
from storage_schemas.plumbing.errors import StoreError
from storage_schemas.plumbing.remote_files import stat_url
from storage_schemas.store.commit import CommitRecord, input_change
from storage_schemas.store.reader import TargetStore
from storage_schemas.store.root import StorageFailure
from storage_schemas.store.tar_index import TarIndex, read_tar_index, scan_tar_index, write_tar_index

log = logging.getLogger(__name__)


def check_input(record: CommitRecord, storage_options: dict | None = None) -> None:
    """Refuse an input shard whose size or ETag differs from the one the unit was made from."""
    ref = record.input
    try:
        size, etag = stat_url(ref.url, storage_options)
    except FileNotFoundError:
        raise StoreError(f"input {ref.url} of unit {record.source}/{record.unit} is gone") from None
    change = input_change(ref, size, etag)
    if change:
        raise StoreError(
            f"input {ref.url} changed since unit {record.source}/{record.unit} was made ({change}); "
            "its targets no longer match it"
        )


@dataclass
class UnitTar:
    """Where each sample of a unit lies in its input tar: the image member of each."""

    record: CommitRecord
    positions: np.ndarray  # int64 [m], sample_index of every sample of the unit in the tar
    keys: list[str]  # [m]
    spans: np.ndarray  # int64 [m, 2], (offset, size) of its image member; size -1 without one

    def image_spans(self, positions: np.ndarray, keys: list[str]) -> list[tuple[str, int, int]]:
        """(url, offset, size) of each sample's image, checking that the tar has the stored key there."""
        at = np.searchsorted(self.positions, positions)
        out = []
        for p, k, i in zip(positions.tolist(), keys, at.tolist()):
            if i >= len(self.positions) or self.positions[i] != p or self.keys[i] != k:
                found = self.keys[i] if i < len(self.positions) and self.positions[i] == p else "no sample"
                raise StoreError(
                    f"input {self.record.input.url} sample {self.record.input.sample_start + p} is "
                    f"'{found}', the targets of unit {self.record.source}/{self.record.unit} say '{k}'"
                )
            if self.spans[i, 1] < 0:
                raise StoreError(f"input {self.record.input.url}: sample '{k}' has no image member")
            out.append((self.record.input.url, int(self.spans[i, 0]), int(self.spans[i, 1])))
        return out


_scanned: dict[tuple[str, str, int, str | None], TarIndex] = {}  # this process's, by (store, url, size, etag)
_scan_lock = threading.Lock()


def unit_tar(store: TargetStore, record: CommitRecord, storage_options: dict | None = None) -> UnitTar:
    """The unit's slice of its shard's tar index, after checking the input is the one it was made
    from. A shard without a stored index (a store made before indexes existed) is scanned once and
    its index stored, as the read task that streams a shard stores it (`_scan_and_store`)."""
    check_input(record, storage_options)
    ref = record.input
    index = read_tar_index(store.storage, record.kind, record.source, record.shard, ref.size, ref.etag)
    return _unit_slice(index if index is not None else _scan_and_store(store, record, storage_options), record)


def _scan_and_store(store: TargetStore, record: CommitRecord, storage_options: dict | None) -> TarIndex:
    """The index of a shard that has none stored, by a scan of its tar (a full read), kept for this
    process and written to the store: the next loader processes and epochs read it by range
    instead of streaming the tar again for each of its units."""
    ref = record.input
    key = (store.url, ref.url, ref.size, ref.etag)
    with _scan_lock:  # a loader's fetch threads reach a shard's units together
        if key not in _scanned:
            log.warning("%s: no tar index in the store; scanning the tar (a full read) and storing its index", ref.url)
            index = scan_tar_index(ref.url, storage_options, ref.size, ref.etag)
            try:
                write_tar_index(store.storage, record.kind, record.source, record.shard, index)
            except StorageFailure as e:
                log.warning(
                    "%s: its tar index could not be stored (%s): each loader process scans it again", ref.url, e
                )
            _scanned[key] = index
        return _scanned[key]


def _unit_slice(index: TarIndex, record: CommitRecord) -> UnitTar:
    start = record.input.sample_start
    stop = record.input.sample_stop if record.input.sample_stop is not None else start + record.n_input
    t = index.members(start, stop)
    sample = t.column("sample_index").to_numpy().astype(np.int64) - start
    ext = np.array(t.column("ext").to_pylist(), dtype=object)
    rank = np.array([IMAGE_EXTENSIONS.index(e) if e in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS) for e in ext])
    offset, size = t.column("offset").to_numpy(), t.column("size").to_numpy()
    order = np.lexsort((rank, sample))  # per sample, its first image member by the shared priority
    positions, first = np.unique(sample[order], return_index=True)
    best = order[first]
    spans = np.stack([offset[best], np.where(rank[best] < len(IMAGE_EXTENSIONS), size[best], -1)], axis=1)
    keys = t.column("key").take(pa.array(best)).to_pylist()
    return UnitTar(record, positions, keys, spans.astype(np.int64).reshape(-1, 2))
