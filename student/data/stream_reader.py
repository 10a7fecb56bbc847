"""One stream of an epoch plan, read in a loader worker: its groups of runs fetched ahead by threads.

    reader = StreamReader(plan, stream, source, store, options, read_run=16, mix_window=512, start=0, pool=pool)
    samples = reader.take(64)          # the stream's next 64 samples, in the plan's order

A group (`student.data.epoch_plan`) is fetched whole: the pieces it needs that are not loaded yet, the
units' tar slices, then every image of the group in one `read_spans` call (coalesced ranged
requests, concurrent on object stores). `READ_AHEAD` groups are in flight beyond the one being
taken from, so the worker's decode and render never wait on storage when the store keeps up.
Pieces and tar slices are loaded once and dropped after the last sample that needs them is
fetched; a reader started mid-epoch (a resume) fetches nothing before its start.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar

import numpy as np

from storage_schemas.store import TargetStore
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.tar_index import read_spans
from storage_schemas.store.unit_tar import unit_tar
from student.data.epoch_plan import EpochPlan, Piece, stream_order

READ_AHEAD = 2  # groups fetched ahead of the one being taken from
FETCH_THREADS = 4  # per loader worker, shared by its streams

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedLoads(Generic[K, V]):
    """Values loaded once by whichever fetch thread asks first, dropped after their last use."""

    def __init__(self, load: Callable[[K], V], uses: Counter):
        self._load, self._uses = load, uses
        self._lock = threading.Lock()
        self._futures: dict[K, Future] = {}

    def get(self, key: K) -> V:
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = Future()
        if owner:
            try:
                future.set_result(self._load(key))
            except BaseException as e:
                future.set_exception(e)
        return future.result()

    def used(self, key: K, n: int = 1) -> None:
        with self._lock:
            self._uses[key] -= n
            if self._uses[key] <= 0:
                self._futures.pop(key, None)

    def __len__(self) -> int:
        return len(self._futures)


class SampleSource(Protocol):
    """The kind-specific half of reading (student.data.batches' makers)."""

    def load_piece(self, record: CommitRecord, piece: Piece, epoch: int) -> Any: ...

    def make(self, record: CommitRecord, targets: Any, i: int, data: bytes, epoch: int) -> Any: ...

    read_gaps: bool  # whether a run's reads go through samples between its own (see StreamReader._fetch)


def adjacent_blocks(runs: list[Hashable], positions: list[int]) -> list[tuple]:
    """Each run split into blocks of samples adjacent in the tar (positions p, p+1, ...; a sample
    twice stays in one block): (run, block) per entry."""
    out: list[tuple] = [()] * len(runs)
    by_run: dict[Hashable, list[int]] = {}
    for n, r in enumerate(runs):
        by_run.setdefault(r, []).append(n)
    for r, members in by_run.items():
        unique = sorted(set(positions[n] for n in members))
        block = {p: p - k for k, p in enumerate(unique)}  # constant along a run of consecutive positions
        for n in members:
            out[n] = (r, block[positions[n]])
    return out


class StreamReader:
    def __init__(
        self,
        plan: EpochPlan,
        stream: int,
        *,
        source: SampleSource,
        store: TargetStore,
        storage_options: dict | None,
        read_run: int,
        mix_window: int,
        start: int,
        pool: ThreadPoolExecutor,
    ):
        self.plan, self.source, self.store, self.options, self.pool = plan, source, store, storage_options, pool
        self.read_run = read_run
        self.units = plan.streams[stream]
        self.order = stream_order(plan, stream, read_run, mix_window)
        self.end = plan.stream_samples(stream)
        self.start = self.pos = start
        o = self.order
        live = slice(start, self.end)
        self.pieces: SharedLoads = SharedLoads(
            self._load_piece, Counter(zip(o.unit[live].tolist(), o.piece[live].tolist()))
        )
        self.tars: SharedLoads = SharedLoads(self._load_tar, Counter(o.unit[live].tolist()))
        self.groups: dict[int, Future] = {}

    def _load_piece(self, key: tuple[int, int]) -> Any:
        su = self.units[key[0]]
        return self.source.load_piece(su.unit.record, su.unit.pieces[key[1]], self.plan.epoch)

    def _load_tar(self, u: int):
        return unit_tar(self.store, self.units[u].unit.record, self.options)

    def _bounds(self, g: int) -> tuple[int, int]:
        starts = self.order.group_start
        return max(int(starts[g]), self.start), min(int(starts[g + 1]), self.end)

    def _fetch(self, g: int) -> list[Any]:
        """Samples [lo, hi) of group g, images and targets in memory."""
        lo, hi = self._bounds(g)
        o = self.order
        keys = list(zip(o.unit[lo:hi].tolist(), o.piece[lo:hi].tolist(), o.ordinal[lo:hi].tolist()))
        targets = {(u, j): self.pieces.get((u, j)) for u, j in dict.fromkeys((u, j) for u, j, _ in keys)}
        tars = {u: self.tars.get(u) for u in dict.fromkeys(u for u, _, _ in keys)}
        spans: list = [None] * len(keys)
        for (u, j), t in targets.items():  # one lookup per piece, not per sample
            at = [n for n, k in enumerate(keys) if k[:2] == (u, j)]
            ordinals = np.array([keys[n][2] for n in at])
            for n, span in zip(at, tars[u].image_spans(t.positions[ordinals], [t.keys[i] for i in ordinals])):
                spans[n] = span
        # Only a run's own gaps (held-out or error samples) are read through: a run's neighbours in
        # the tar are other runs, which later groups fetch. A subset's runs skip other samples: they
        # are cut where the tar holds a sample outside it.
        if self.source.read_gaps:
            runs = [(u, j, i // self.read_run) for u, j, i in keys]
        else:  # by adjacency alone, so that two items of one sample (two views) share a read
            runs = adjacent_blocks(
                [(u, j) for u, j, _ in keys], [int(targets[(u, j)].positions[i]) for u, j, i in keys]
            )
        images = read_spans(self.options, spans, runs)
        out = [
            self.source.make(self.units[u].unit.record, targets[(u, j)], i, data, self.plan.epoch)
            for (u, j, i), data in zip(keys, images)
        ]
        for u, j, _ in keys:
            self.pieces.used((u, j))
            self.tars.used(u)
        return out

    def _group_of(self, pos: int) -> int:
        return int(np.searchsorted(self.order.group_start, pos, side="right")) - 1

    def take(self, n: int) -> list[Any]:
        """The stream's next n samples."""
        if self.pos + n > self.end:
            raise IndexError(f"stream has {self.end - self.pos} samples left this epoch, {n} asked")
        out: list[Any] = []
        while len(out) < n:
            g = self._group_of(self.pos)
            last = self._group_of(self.end - 1)
            for ahead in range(g, min(g + READ_AHEAD, last) + 1):
                if ahead not in self.groups:
                    self.groups[ahead] = self.pool.submit(self._fetch, ahead)
            lo, hi = self._bounds(g)
            samples = self.groups[g].result()
            take = min(n - len(out), hi - self.pos)
            out += samples[self.pos - lo : self.pos - lo + take]
            self.pos += take
            if self.pos >= hi:
                del self.groups[g]
        return out


def new_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
