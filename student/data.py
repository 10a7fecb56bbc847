"""Reading targets for training: committed units streamed in lockstep with their image shards.

    for sample in iter_clip_unit(store, record, keep=train_split(0.01)):
        v = choose_view(seed, epoch, sample.identity, len(sample.crops), "random")
        pixels = render_view(sample.image(448), sample.crops[v], sample.flips[v], 448)
        target = sample.embeddings[v]

    for sample in iter_sam_unit(store, record):
        image_1024, input_hw = sample.sam_input()         # exactly SamPredictor's input
        logits = sample.logits()                          # float32 [P, M, 256, 256], round 0

Each unit is read front to back with its input shard (no random lookups across the store). The
input must be the one the unit was made from: its size and ETag are checked against the commit
record first, and each sample's key against the stored rows. Images decode lazily, so a reader
that skips a sample (another loader worker's batch, a resumed epoch) pays no decode. Views are
rendered by `storage_schemas.views.render_view` from the decode rule of `storage_schemas.decode`:
at the teacher's size they are the teacher's pixels (`pixel_hash` says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import numpy as np
from PIL import Image

from storage_schemas.clip_views_table import ClipViews
from storage_schemas.commit import CommitRecord, input_change
from storage_schemas.decode import DEFAULT_MAX_PIXELS, decode_image, draft_side_for
from storage_schemas.errors import StoreError
from storage_schemas.identity import SampleId, is_held_out, stable_hash64
from storage_schemas.mask_logits import decode_logits
from storage_schemas.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.storage import stat_url
from storage_schemas.store import TargetStore
from storage_schemas.sam_tables import SamPrompts, prompts_by_image
from storage_schemas.tar_samples import iter_tar_samples

Keep = Callable[[SampleId], bool]


def split_filter(fraction: float, split: Literal["train", "held_out"]) -> Keep:
    """Samples of one split; the split is `storage_schemas.identity.is_held_out`, stable everywhere."""
    if split == "held_out":
        return lambda s: is_held_out(s, fraction)
    return lambda s: not is_held_out(s, fraction)


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


def unit_keys(store: TargetStore, record: CommitRecord) -> list[str]:
    """Keys of a unit's stored samples in sample order (reads one column)."""
    table = "views" if record.kind == "clip" else "images"
    t = store.read_unit_table(record, table, columns=["sample_index", "key"])
    if t is None:
        return []
    t = t.sort_by("sample_index")
    if record.kind == "clip":  # one row per view
        _, first = np.unique(t.column("sample_index").to_numpy(), return_index=True)
        return [t.column("key")[int(i)].as_py() for i in first]
    return t.column("key").to_pylist()


def count_kept(store: TargetStore, record: CommitRecord, keep: Keep) -> int:
    return sum(keep(SampleId(record.source, record.shard, k)) for k in unit_keys(store, record))


def _stream_unit(record: CommitRecord, keys: list[str], index: np.ndarray, keep: Keep | None,
                 storage_options: dict | None) -> Iterator[tuple[int, Any]]:
    """(row, TarSample) for each stored, kept sample of the unit, in shard order."""
    check_input(record, storage_options)
    row_of = {int(i): n for n, i in enumerate(index)
              if keep is None or keep(SampleId(record.source, record.shard, keys[n]))}
    start = record.input.sample_start
    stop = record.input.sample_stop if record.input.sample_stop is not None else start + record.n_input
    for sample in iter_tar_samples(record.input.url, storage_options, lambda i: (i - start) in row_of):
        if sample.index >= stop:
            break
        n = row_of.get(sample.index - start)
        if n is None:
            continue  # before the unit, held out, or a sample that is in the errors table
        if sample.key != keys[n]:
            raise StoreError(f"input {record.input.url} sample {sample.index} is '{sample.key}', the targets of "
                             f"unit {record.source}/{record.unit} say '{keys[n]}'")
        yield n, sample


@dataclass
class ClipSample:
    identity: SampleId
    sample_index: int  # position in its unit
    data: bytes = field(repr=False)  # the encoded image as stored in the shard
    crops: np.ndarray  # float32 [K, 4], normalised [x0, y0, x1, y1]
    flips: np.ndarray  # bool [K]
    pixel_hashes: list[str]  # of each view rendered at the teacher's size
    embeddings: np.ndarray  # float16 [K, D], the teacher's targets
    max_pixels: int = DEFAULT_MAX_PIXELS

    def image(self, size: int) -> Image.Image:
        """The image decoded by the shared rule for rendering views of `size` px."""
        return decode_image(self.data, self.max_pixels, draft_side_for(size)).image


def iter_clip_unit(store: TargetStore, record: CommitRecord, keep: Keep | None = None,
                   storage_options: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[ClipSample]:
    """The stored samples of one committed CLIP unit (those `keep` accepts), in order."""
    table = store.read_unit_table(record, "views")
    if table is None:
        return
    v = ClipViews.from_table(table)
    for n, sample in _stream_unit(record, v.keys, v.sample_index, keep, storage_options):
        yield ClipSample(SampleId(record.source, record.shard, sample.key), int(v.sample_index[n]), sample.image()[1],
                         v.crops[n], v.flips[n], list(v.pixel_hashes[n]), v.embeddings[n], max_pixels)


@dataclass
class SamSample:
    identity: SampleId
    sample_index: int
    data: bytes = field(repr=False)
    original_hw: tuple[int, int]
    prompts: SamPrompts
    _logits: Callable[[], np.ndarray] = field(repr=False)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def sam_input(self) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 [1024, 1024, 3] (resized image top-left, zeros elsewhere) and the resized (h, w)."""
        resized = sam_input_image(np.asarray(decode_image(self.data, self.max_pixels).image))
        return pad_image(resized), resized.shape[:2]

    def logits(self) -> np.ndarray:
        """The teacher's round-0 low-res logits: float32 [P, M, 256, 256] (reads the image's chunk)."""
        return self._logits()

    def prompts_1024(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [p, 4] and points [p, n, 2] of the chosen prompts in the 1024 px frame."""
        boxes = sam_boxes(self.prompts.boxes[chosen], self.original_hw).astype(np.float32)
        points = sam_points(self.prompts.points[chosen], self.original_hw).astype(np.float32)
        return boxes, points


def iter_sam_unit(store: TargetStore, record: CommitRecord, keep: Keep | None = None,
                  storage_options: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[SamSample]:
    """The stored images of one committed SAM unit (those `keep` accepts), in order."""
    images = store.read_unit_table(record, "images")
    if images is None:
        return
    images = images.sort_by("sample_index")
    manifest = store.manifest("sam")
    precision = manifest.must_match["precision"]
    prompts = prompts_by_image(store.read_unit_table(record, "prompts"),
                                manifest.must_match["policy"]["points_per_prompt"])
    array = store.open_logits(record)
    index = images.column("sample_index").to_numpy()
    keys = images.column("key").to_pylist()
    hw = np.stack([images.column("height").to_numpy(), images.column("width").to_numpy()], axis=1)
    for n, sample in _stream_unit(record, keys, index, keep, storage_options):
        p = prompts[int(index[n])]
        count = len(p.structure)

        def logits(n=n, count=count) -> np.ndarray:
            return decode_logits(array[n, :count], precision)  # round 0 = slots [0, P)

        yield SamSample(SampleId(record.source, record.shard, sample.key), int(index[n]), sample.image()[1],
                        (int(hw[n, 0]), int(hw[n, 1])), p, logits, max_pixels)


def choose_view(seed: int, epoch: int, sample: SampleId, n_views: int, mode: Literal["random", "cycle"]) -> int:
    """Which stored view a sample uses this epoch: `cycle` is epoch modulo K, `random` a stable draw."""
    if mode == "cycle":
        return epoch % n_views
    return stable_hash64("view-choice", seed, epoch, *sample) % n_views


def choose_prompts(seed: int, epoch: int, sample: SampleId, n_stored: int, n: int) -> np.ndarray:
    """`n` of an image's stored prompts (all if it has fewer), a stable draw per epoch: int64 [<= n]."""
    rng = np.random.default_rng(stable_hash64("prompt-choice", seed, epoch, *sample))
    return np.sort(rng.permutation(n_stored)[:n])


def unit_id(record: CommitRecord) -> tuple[str, str, str]:
    return record.kind, record.source, record.unit


def split_units(records: list[CommitRecord], counts: dict[tuple[str, str, str], int], world_size: int,
                rank: int, seed: int, epoch: int) -> tuple[list[CommitRecord], int]:
    """This rank's units for the epoch, and the sample count every rank stops at.

    `counts` gives each unit's samples in the split being read. Units are shuffled by a stable hash
    of (seed, epoch, unit) and dealt to the rank with the fewest samples so far, so ranks never
    share a unit; every rank stops after the smallest rank's count, so all take the same number
    of steps.
    """
    order = sorted(records, key=lambda r: stable_hash64("unit-order", seed, epoch, *unit_id(r)))
    loads, mine = [0] * world_size, []
    for r in order:
        target = min(range(world_size), key=lambda i: (loads[i], i))
        loads[target] += counts[unit_id(r)]
        if target == rank:
            mine.append(r)
    return mine, min(loads)
