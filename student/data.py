"""Reading CLIP targets for training: committed units streamed in lockstep with their image shards.

    for sample in iter_clip_unit(store, record, size=224):
        v = choose_view(seed, epoch, sample.identity, len(sample.crops), "random")
        pixels = render_view(sample.image, sample.crops[v], sample.flips[v], 448)   # the teacher's crop, 448 px
        target = sample.embeddings[v]

Each unit is read front to back with its input shard (no random lookups across the store). The
input must be the one the unit was made from: its size and ETag are checked against the commit
record first, and each sample's key against the stored rows. Views are rendered by
`storage_schemas.views.render_view` from the decode rule of `storage_schemas.decode`: at the
teacher's size they are the teacher's pixels (`pixel_hash` says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Literal

import numpy as np
from PIL import Image

from storage_schemas.commit import CommitRecord, input_change
from storage_schemas.decode import DEFAULT_MAX_PIXELS, decode_image, draft_side_for
from storage_schemas.errors import StoreError
from storage_schemas.identity import SampleId, stable_hash64
from storage_schemas.storage import stat_url
from storage_schemas.store import TargetStore
from storage_schemas.tar_samples import iter_tar_samples


@dataclass
class ClipSample:
    identity: SampleId
    sample_index: int  # position in its unit
    image: Image.Image  # decoded by the shared rule for the size asked for
    crops: np.ndarray  # float32 [K, 4], normalised [x0, y0, x1, y1]
    flips: np.ndarray  # bool [K]
    pixel_hashes: list[str]  # of each view rendered at the teacher's size
    embeddings: np.ndarray  # float16 [K, D], the teacher's targets


def check_input(record: CommitRecord, storage_options: dict[str, Any] | None = None) -> None:
    """Refuse an input shard whose size or ETag differs from the one the unit was made from."""
    ref = record.input
    try:
        size, etag = stat_url(ref.url, storage_options)
    except FileNotFoundError:
        raise StoreError(f"input {ref.url} of unit {record.source}/{record.unit} is gone") from None
    change = input_change(ref, size, etag)
    if change:
        raise StoreError(f"input {ref.url} changed since unit {record.source}/{record.unit} was made ({change}); "
                         "its targets no longer match it")


def iter_clip_unit(store: TargetStore, record: CommitRecord, size: int, storage_options: dict | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[ClipSample]:
    """The stored samples of one committed CLIP unit, in order, decoded for rendering at `size` px."""
    check_input(record, storage_options)
    table = store.read_unit_table(record, "views").sort_by([("sample_index", "ascending"), ("view", "ascending")])
    k = int(np.max(table.column("view").to_numpy())) + 1 if table.num_rows else 0
    index = table.column("sample_index").to_numpy()[::k] if k else np.zeros(0, np.int32)
    keys = table.column("key").to_pylist()[::k] if k else []
    crops = np.asarray(table.column("crop").combine_chunks().values, np.float32).reshape(-1, k, 4) if k else None
    flips = table.column("flip").to_numpy(zero_copy_only=False).reshape(-1, k) if k else None
    hashes = table.column("pixel_hash").to_pylist()
    emb = table.column("embedding").combine_chunks()
    embeddings = np.asarray(emb.values, np.float16).reshape(-1, k, emb.type.list_size) if k else None
    row_of = {int(i): n for n, i in enumerate(index)}
    start = record.input.sample_start
    stop = record.input.sample_stop if record.input.sample_stop is not None else start + record.n_input
    for sample in iter_tar_samples(record.input.url, storage_options, lambda i: (i - start) in row_of):
        if sample.index >= stop:
            break
        n = row_of.get(sample.index - start)
        if n is None:
            continue  # before the unit, or a sample that is in the errors table
        if sample.key != keys[n]:
            raise StoreError(f"input {record.input.url} sample {sample.index} is '{sample.key}', the targets of "
                             f"unit {record.source}/{record.unit} say '{keys[n]}'")
        image = sample.image()
        decoded = decode_image(image[1], max_pixels, draft_side_for(size))
        yield ClipSample(SampleId(record.source, record.shard, sample.key), int(index[n]), decoded.image,
                         crops[n], flips[n], hashes[n * k:(n + 1) * k], embeddings[n])


def choose_view(seed: int, epoch: int, sample: SampleId, n_views: int, mode: Literal["random", "cycle"]) -> int:
    """Which stored view a sample uses this epoch: `cycle` is epoch modulo K, `random` a stable draw."""
    if mode == "cycle":
        return epoch % n_views
    return stable_hash64("view-choice", seed, epoch, *sample) % n_views


def split_units(records: list[CommitRecord], world_size: int, rank: int, seed: int, epoch: int
                ) -> tuple[list[CommitRecord], int]:
    """This rank's units for the epoch, and the sample count every rank stops at.

    Units are shuffled by a stable hash of (seed, epoch, unit) and dealt to the rank with the fewest
    samples so far, so ranks never share a unit; every rank stops after the smallest rank's count,
    so all take the same number of steps.
    """
    order = sorted(records, key=lambda r: stable_hash64("unit-order", seed, epoch, r.kind, r.source, r.unit))
    loads, mine = [0] * world_size, []
    for r in order:
        target = min(range(world_size), key=lambda i: (loads[i], i))
        loads[target] += r.n_stored
        if target == rank:
            mine.append(r)
    return mine, min(loads)
