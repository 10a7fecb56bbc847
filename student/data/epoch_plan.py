"""One epoch of one kind, planned before any image is read: what each stream of each rank reads,
the batches, and the order of the samples inside a stream. Pure functions of the store's piece
counts and (seed, epoch): every rank and loader worker computes the same plan.

    units = [unit_pieces(store, r, keep) for r in store.commits("clip")]    # once per run (student.data.pieces)
    plan = plan_epoch(units, world_size=2, rank=0, streams=8, seed=0, epoch=3, sizes={224: 64, 448: 16}, tag="clip")
    order = stream_order(plan, stream=5, read_run=16, mix_window=512)     # in the loader worker that reads stream 5

Dealing. A unit's training samples come in pieces (a teacher call's part files, see
`student.data.pieces`). Units are shuffled by a stable hash of (seed, epoch, unit) and so are each unit's
pieces; the pieces laid end to end are cut into world_size x streams slots of equal sample count at
piece boundaries, slot r * streams + s being stream s of rank r. A slot holds mostly whole units
(one is split only where a cut falls inside it) and no piece is in two slots, so no file is read
twice in an epoch.

Batches. Batch b of every rank comes from its stream b mod streams; its resolution is a stable hash
of (seed, epoch, b), the same on every rank, and its size follows (the variable batch of CVNets:
smaller at higher resolution). The epoch ends before the first batch that some rank's stream cannot
fill, so every rank takes the same steps (an epoch whose deal leaves a stream short of one
batch, possible only when pieces are few, has none). A DataLoader with W workers (W dividing streams) collects
batch b from worker (b - start) mod W, so worker w reads the streams s = start + w (mod W), each
whole: the batch sequence does not depend on W.

Order inside a stream. A unit's pieces are read one after another, the runs of a piece (`read_run`
consecutive training samples, fetched with one coalesced ranged read) in a seeded order. The units'
runs are interleaved in proportion: run j of a unit with n runs sits at time (j + phase) / n with a
seeded phase per unit, so each unit spreads over the whole epoch and consecutive runs cycle through
the stream's units. The run sequence is cut into groups of mix_window // read_run runs, and a group gives its
samples row by row (sample i of every run, the runs in a seeded order): neighbouring samples come
from different runs, so a batch of B samples draws from about min(B, units of the stream, runs of a
group) units. A reader holds one group's images and one piece per unit at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage_schemas.plumbing.errors import StoreError
from storage_schemas.plumbing.identity import stable_hash64
from storage_schemas.store.commit import CommitRecord


def unit_id(record: CommitRecord) -> tuple[str, str, str]:
    return record.kind, record.source, record.unit


@dataclass(frozen=True)
class Piece:
    """Part files of one unit that no other part's sample range overlaps: loaded together."""

    parts: tuple[int, ...]  # indexes into the unit's part files (storage_schemas.store.table_files)
    count: int  # training samples in them (the split being read)


@dataclass(frozen=True)
class UnitPieces:
    record: CommitRecord
    pieces: tuple[Piece, ...]  # in sample order

    @property
    def count(self) -> int:
        return sum(p.count for p in self.pieces)


@dataclass(frozen=True)
class SlotUnit:
    """The pieces of one unit a stream reads, in reading order."""

    unit: UnitPieces
    pieces: tuple[int, ...]  # indexes into unit.pieces

    @property
    def count(self) -> int:
        return sum(self.unit.pieces[j].count for j in self.pieces)


@dataclass(frozen=True)
class EpochPlan:
    tag: str  # the kind ("clip", "sam"): part of every seed, so the kinds' orders are independent
    seed: int
    epoch: int
    rank: int
    streams: list[list[SlotUnit]]  # this rank's streams
    batches: list[tuple[int, int]]  # (resolution px, samples) per batch, identical on every rank

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.batches)

    def stream_of(self, batch: int) -> int:
        return batch % len(self.streams)

    def stream_batches(self, stream: int) -> list[int]:
        return list(range(stream, len(self.batches), len(self.streams)))

    def stream_samples(self, stream: int) -> int:
        """Samples the stream's batches take this epoch (the rest of its slot waits for a later one)."""
        return sum(self.batches[b][1] for b in self.stream_batches(stream))


def batch_sizes(base: int, resolutions: list[int]) -> dict[int, int]:
    """Per-resolution batch sizes from the batch at the smallest one: base * (r0 / r)^2, at least 1."""
    r0 = min(resolutions)
    return {r: max(1, int(base * (r0 / r) ** 2)) for r in resolutions}


def deal_slots(units: list[UnitPieces], slots: int, seed: int, epoch: int) -> list[list[SlotUnit]]:
    """The units' pieces cut into `slots` runs of equal sample count (see the module docstring)."""
    order = sorted(units, key=lambda u: stable_hash64("unit-order", seed, epoch, *unit_id(u.record)))
    laid: list[tuple[UnitPieces, int]] = []
    for u in order:
        pieces = sorted(
            range(len(u.pieces)), key=lambda j: stable_hash64("piece-order", seed, epoch, *unit_id(u.record), j)
        )
        laid += [(u, j) for j in pieces if u.pieces[j].count]
    total = sum(u.pieces[j].count for u, j in laid)
    per_slot = total / slots if total else 1.0
    out: list[list[tuple[UnitPieces, list[int]]]] = [[] for _ in range(slots)]
    done = 0
    for u, j in laid:
        n = u.pieces[j].count
        slot = min(slots - 1, int((done + n / 2) / per_slot))  # the slot holding the piece's middle sample
        done += n
        if out[slot] and out[slot][-1][0] is u:
            out[slot][-1][1].append(j)
        else:
            out[slot].append((u, [j]))
    return [[SlotUnit(u, tuple(js)) for u, js in slot] for slot in out]


def plan_epoch(
    units: list[UnitPieces],
    *,
    world_size: int,
    rank: int,
    streams: int,
    seed: int,
    epoch: int,
    sizes: dict[int, int],
    tag: str,
) -> EpochPlan:
    pieces = sum(1 for u in units for p in u.pieces if p.count)
    if pieces < world_size * streams:
        fix = "lower data.streams" if streams > 1 else "use fewer processes or add data"
        raise StoreError(
            f"{tag}: {sum(u.count for u in units)} training samples in {pieces} pieces cannot feed "
            f"{world_size} process(es) x {streams} streams; {fix}"
        )
    slots = deal_slots(units, world_size * streams, seed, epoch)
    loads = np.array([sum(su.count for su in slot) for slot in slots]).reshape(world_size, streams)
    # Stream s of every rank stops where its smallest one does. With few pieces, each a large part
    # of a slot (a sample store), one epoch's deal can leave a slot short of a batch: that epoch
    # has no batches, and student.data.batches.Stream goes on to the next.
    capacity = loads.min(axis=0)
    resolutions = sorted(sizes)
    batches: list[tuple[int, int]] = []
    used = np.zeros(streams, dtype=np.int64)
    while True:
        b = len(batches)
        res = resolutions[stable_hash64("batch-resolution", tag, seed, epoch, b) % len(resolutions)]
        s = b % streams
        if used[s] + sizes[res] > capacity[s]:
            break  # the rest of each slot is left for later epochs (the deal changes every epoch)
        batches.append((res, sizes[res]))
        used[s] += sizes[res]
    return EpochPlan(tag, seed, epoch, rank, slots[rank * streams : (rank + 1) * streams], batches)


@dataclass(frozen=True)
class StreamOrder:
    """A stream's samples in reading order: sample i is training sample `ordinal[i]` of piece
    `piece[i]` of the stream's unit `unit[i]`; group g is samples [group_start[g], group_start[g+1])."""

    unit: np.ndarray  # int32 [n], index into plan.streams[stream]
    piece: np.ndarray  # int32 [n], index into that unit's pieces
    ordinal: np.ndarray  # int32 [n], position among the piece's training samples
    group_start: np.ndarray  # int64 [groups + 1]

    def __len__(self) -> int:
        return len(self.unit)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(stable_hash64(*key))


def stream_order(plan: EpochPlan, stream: int, read_run: int, mix_window: int) -> StreamOrder:
    """The order in which `stream` of `plan` gives its samples (see the module docstring)."""
    key = (plan.tag, plan.seed, plan.epoch)
    runs, times = [], []  # (unit, piece, first ordinal, length) per run, and its time
    for u, su in enumerate(plan.streams[stream]):
        ident = unit_id(su.unit.record)
        mine = []
        for j in su.pieces:
            n = su.unit.pieces[j].count
            starts = _rng("run-order", *key, *ident, j).permutation(np.arange(0, n, read_run))
            mine += [(u, j, int(a), min(read_run, n - int(a))) for a in starts]
        phase = (stable_hash64("unit-phase", *key, *ident) % (1 << 20)) / (1 << 20)
        times += [(i + phase) / len(mine) for i in range(len(mine))]
        runs += mine
    runs = [runs[i] for i in sorted(range(len(runs)), key=lambda i: (times[i], runs[i][0]))]
    per_group = max(1, mix_window // read_run)
    unit, piece, ordinal, group_start = [], [], [], [0]
    for g, first in enumerate(range(0, len(runs), per_group)):
        group = runs[first : first + per_group]
        slot = _rng("group-order", *key, plan.rank, stream, g).permutation(len(group))  # run k's place in a row
        lengths = np.array([r[3] for r in group])
        row = np.concatenate([np.arange(n) for n in lengths])
        which = np.repeat(np.arange(len(group)), lengths)
        at = np.lexsort((slot[which], row))  # row by row, runs in their seeded order within a row
        which, row = which[at], row[at]
        table = np.array([(r[0], r[1], r[2]) for r in group])
        unit.append(table[which, 0])
        piece.append(table[which, 1])
        ordinal.append(table[which, 2] + row)
        group_start.append(group_start[-1] + len(at))
    cat = lambda xs: np.concatenate(xs).astype(np.int32) if xs else np.zeros(0, np.int32)  # noqa: E731
    return StreamOrder(cat(unit), cat(piece), cat(ordinal), np.asarray(group_start, dtype=np.int64))
