"""The trainer's unit of reading: a piece of a committed unit, its targets and its images.

    keep = split_filter(0.01, "train")
    units = unit_pieces(store, record, keep)                           # main process: counts only
    targets = load_clip_piece(store, record, units.pieces[0], keep, ViewChoice(0, epoch, "random"))
    tar = unit_tar(store, record, storage_options)   # store/unit_tar.py: the stored tar index, input checked
    images = read_spans(storage_options, tar.image_spans(targets.positions, targets.keys))

A piece is one part file of a unit (a teacher call's output, see storage_schemas.store.layout), or
several whose sample ranges overlap (a retried call). Each part file is read whole, in one
request, and only the columns and views a training sample needs are decoded from it. Images are
read by byte range from the shard's tar index (`storage_schemas.store.tar_index`): nothing before them,
no other member unless it lies in a gap too small to be worth another request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from storage_schemas.plumbing.errors import StoreError
from storage_schemas.plumbing.identity import SampleId, is_held_out, stable_hash64
from storage_schemas.store import TargetStore, table_files
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.mask_logits import open_logits
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.sam_tables import SamPrompts, prompts_by_image
from storage_schemas.store.subsets import Subset
from student.data.epoch_plan import Piece, UnitPieces

Keep = Callable[[SampleId], bool]


def split_filter(fraction: float, split: Literal["train", "held_out"]) -> Keep:
    """Samples of one split; the split is `storage_schemas.plumbing.identity.is_held_out`, stable everywhere."""
    if split == "held_out":
        return lambda s: is_held_out(s, fraction)
    return lambda s: not is_held_out(s, fraction)


def index_table(record: CommitRecord) -> str:
    """The table with one entry per stored sample: its part files define the pieces."""
    return "views" if record.kind == "clip" else "images"


def unit_pieces(
    store: TargetStore, record: CommitRecord, keep: Keep, items: Callable[[SampleId], int] | None = None
) -> UnitPieces:
    """The unit's pieces and their training-item counts (one per kept sample, or `items(sample)`:
    a subset sample's retrieved views), from the key column of each part."""
    ranges = []  # (first sample, last sample, kept, part)
    for j, rel in enumerate(table_files(record, index_table(record))):
        if record.file(rel) is None:
            continue
        with store.storage.fs.open(store.storage.full(rel), "rb") as f:
            t = pq.read_table(f, columns=["sample_index", "key"])
        index, first = np.unique(t.column("sample_index").to_numpy(), return_index=True)
        if not len(index):
            continue
        keys = t.column("key").take(pa.array(first)).to_pylist()
        ids = [SampleId(record.source, record.shard, k) for k in keys]
        kept = sum((items(s) if items else 1) for s in ids if keep(s))
        ranges.append((int(index[0]), int(index[-1]), kept, j))
    pieces: list[tuple[int, int, list[int]]] = []  # (last sample, kept, parts)
    for lo, hi, kept, j in sorted(ranges):
        if pieces and lo <= pieces[-1][0]:
            last, n, parts = pieces[-1]
            pieces[-1] = (max(last, hi), n + kept, parts + [j])
        else:
            pieces.append((hi, kept, [j]))
    return UnitPieces(record, tuple(Piece(tuple(parts), n) for _, n, parts in pieces))


def read_whole(storage: StoreRoot, rel: str) -> pa.BufferReader:
    """A part file in one request: a Parquet reader then seeks in memory, not on the store."""
    return pa.BufferReader(storage.fs.cat_file(storage.full(rel)))


@dataclass(frozen=True)
class ViewChoice:
    """Which stored view a sample trains on in an epoch."""

    seed: int
    epoch: int
    mode: Literal["random", "cycle"]
    views: int | None = None  # only the first N stored views (None: all)
    subset: Subset | None = None  # a transfer set: each sample trains on its retrieved views, every epoch

    def usable(self, stored: int) -> int:
        return min(self.views or stored, stored)

    def picks(self, sample: SampleId, stored: int) -> tuple[int, ...]:
        """The views `sample` trains on this epoch: one drawn view, or its subset views."""
        if self.subset is not None:
            return self.subset.views_of(sample)
        return (choose_view(self.seed, self.epoch, sample, self.usable(stored), self.mode),)


def choose_view(seed: int, epoch: int, sample: SampleId, n_views: int, mode: Literal["random", "cycle"]) -> int:
    """Which stored view a sample uses this epoch: `cycle` is epoch modulo K, `random` a stable draw."""
    if mode == "cycle":
        return epoch % n_views
    return stable_hash64("view-choice", seed, epoch, *sample) % n_views


@dataclass
class ClipPieceTargets:
    """A piece's training items in sample order: a sample with the one view it trains on (a subset
    sample retrieved through several views is one item per view)."""

    positions: np.ndarray  # int32 [n], sample_index in the unit
    keys: list[str]  # [n]
    views: np.ndarray  # int16 [n], the view each sample uses
    crops: np.ndarray  # float32 [n, 4], normalised [x0, y0, x1, y1]
    flips: np.ndarray  # bool [n]
    embeddings: np.ndarray  # float16 [n, D]


CLIP_TRAIN_COLUMNS = ["sample_index", "key", "view", "crop", "flip", "embedding"]


def _stored_views(pf: pq.ParquetFile) -> tuple[int, list[tuple[int, int] | None]]:
    """(K, per row group its (min, max) view or None without statistics)."""
    col = pf.schema_arrow.get_field_index("view")
    spans = []
    for i in range(pf.num_row_groups):
        stats = pf.metadata.row_group(i).column(col).statistics
        spans.append((int(stats.min), int(stats.max)) if stats is not None and stats.has_min_max else None)
    known = [s for s in spans if s is not None]
    if len(known) == len(spans) and known:
        return max(hi for _, hi in known) + 1, spans
    return int(pf.read(columns=["view"]).column("view").to_numpy().max()) + 1, spans


def load_clip_piece(
    store: TargetStore, record: CommitRecord, piece: Piece, keep: Keep, choice: ViewChoice
) -> ClipPieceTargets:
    """Decodes only the columns a training sample needs, from the row groups (one per view) of the
    views it may use this epoch, and keeps only each sample's chosen view."""
    files = table_files(record, "views")
    tables, stored = [], None
    for j in piece.parts:
        pf = pq.ParquetFile(read_whole(store.storage, files[j]))
        k, spans = _stored_views(pf)
        stored = k if stored is None else min(stored, k)
        usable = choice.usable(k)
        if choice.subset is not None:  # the views this part's subset samples were retrieved through
            keys = pf.read_row_group(0, columns=["key"], use_threads=False).column("key").to_pylist()
            wanted = {v for key in keys for v in choice.subset.views_of(SampleId(record.source, record.shard, key))}
        else:
            wanted = {choice.epoch % usable} if choice.mode == "cycle" else set(range(usable))
        groups = [i for i, s in enumerate(spans) if s is None or any(s[0] <= v <= s[1] for v in wanted)]
        # Not pyarrow's thread pool: the loader's fetch threads already run pieces side by side
        # (one piece: 4.6 ms single-threaded, 7.5 ms on the pool, measured).
        tables.append(pf.read_row_groups(groups, columns=CLIP_TRAIN_COLUMNS, use_threads=False))
    t = pa.concat_tables(tables)
    index = t.column("sample_index").to_numpy().astype(np.int64)
    view = t.column("view").to_numpy().astype(np.int64)
    positions, first = np.unique(index, return_index=True)
    keys = t.column("key").take(pa.array(first)).to_pylist()
    ids = [SampleId(record.source, record.shard, k) for k in keys]
    kept = np.array([keep(s) for s in ids], dtype=bool)
    ids = [s for s, k in zip(ids, kept) if k]
    picks = [choice.picks(s, stored) for s in ids]
    if sum(map(len, picks)) != piece.count:
        raise StoreError(
            f"unit {record.source}/{record.unit} changed since the run began: a piece holds "
            f"{sum(map(len, picks))} training items, {piece.count} when it was planned"
        )
    # One item per (sample, view) it trains on, in (sample, view) order.
    positions = np.repeat(positions[kept], [len(p) for p in picks])
    ids = [s for s, p in zip(ids, picks) for _ in p]
    chosen = np.array([v for p in picks for v in p], dtype=np.int64)
    combo = index * stored + view
    order = np.argsort(combo, kind="stable")
    want = positions * stored + chosen
    rows = order[np.minimum(np.searchsorted(combo[order], want), len(order) - 1)]
    if len(rows) and not (combo[rows] == want).all():
        raise StoreError(f"unit {record.source}/{record.unit}: a sample lacks the view it was given")
    crop = t.column("crop").combine_chunks()
    emb = t.column("embedding").combine_chunks()
    return ClipPieceTargets(
        positions=positions.astype(np.int32),
        keys=[s.key for s in ids],
        views=chosen.astype(np.int16),
        crops=np.asarray(crop.values, np.float32).reshape(-1, 4)[rows],
        flips=t.column("flip").to_numpy(zero_copy_only=False)[rows],
        embeddings=np.asarray(emb.values, np.float16).reshape(-1, emb.type.list_size)[rows],
    )


@dataclass
class SamPieceTargets:
    """A piece's training images in sample order, with their prompts; logits are read per image."""

    positions: np.ndarray  # int32 [n]
    keys: list[str]
    hw: np.ndarray  # int64 [n, 2], original (height, width)
    prompts: list[SamPrompts]
    arrays: list[zarr.Array]  # one per part
    where: np.ndarray  # int64 [n, 2]: (index into arrays, row in that array)
    precision: str

    def stored_logits(self, i: int) -> np.ndarray:
        """[P, M, 256, 256] in the storage dtype of `precision`: the teacher's round-0 logits of
        image i (one chunk read); `mask_logits.decode_logits` gives float32."""
        a, row = self.where[i]
        return self.arrays[a][int(row), : len(self.prompts[i].structure)]


def load_sam_piece(
    store: TargetStore, record: CommitRecord, piece: Piece, keep: Keep, precision: str, points_per_prompt: int
) -> SamPieceTargets:
    images, prompts, logits = (table_files(record, t) for t in ("images", "prompts", "logits"))
    rows, arrays = [], []
    for a, j in enumerate(piece.parts):
        t = pq.read_table(
            read_whole(store.storage, images[j]), columns=["sample_index", "key", "height", "width"], use_threads=False
        )
        by_image = prompts_by_image(
            pq.read_table(read_whole(store.storage, prompts[j]), use_threads=False), points_per_prompt
        )
        arrays.append(open_logits(store.storage, logits[j]))
        for r, (index, key, h, w) in enumerate(zip(*(t.column(c).to_pylist() for c in t.column_names))):
            if keep(SampleId(record.source, record.shard, key)):
                rows.append((index, key, h, w, by_image[index], a, r))
    rows.sort(key=lambda x: x[0])
    if len(rows) != piece.count:
        raise StoreError(
            f"unit {record.source}/{record.unit} changed since the run began: a piece holds "
            f"{len(rows)} training images, {piece.count} when it was planned"
        )
    return SamPieceTargets(
        positions=np.array([r[0] for r in rows], dtype=np.int32),
        keys=[r[1] for r in rows],
        hw=np.array([(r[2], r[3]) for r in rows], dtype=np.int64).reshape(-1, 2),
        prompts=[r[4] for r in rows],
        arrays=arrays,
        where=np.array([(r[5], r[6]) for r in rows], dtype=np.int64).reshape(-1, 2),
        precision=precision,
    )
