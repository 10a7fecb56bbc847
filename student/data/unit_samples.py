"""Reading a committed unit's samples whole, with every stored view: validation, inspection, tests.

    for sample in iter_clip_unit(store, record, keep=split_filter(0.01, "held_out")):
        pixels = render_view(sample.image(448), sample.crops[0], sample.flips[0], 448)   # view 0
        target = sample.embeddings[0]

    for sample in iter_sam_unit(store, record):
        image_1024, input_hw = sample.sam_input()         # exactly SamPredictor's input
        logits = sample.logits()                          # float32 [P, M, 256, 256], round 0

The trainer reads the same pieces and images (student.data.pieces), one view per sample, through
student.data.batches. Images are read by byte range through the shard's tar index, after the input's
size and ETag are checked against the commit record and each sample's key against the stored rows.
Views are rendered by `storage_schemas.pixels.views.render_view` from the decode rule of
`storage_schemas.pixels.decode`: at the teacher's size they are the teacher's pixels (`pixel_hash` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from storage_schemas.pixels.decode import DEFAULT_MAX_PIXELS, decode_image, draft_side_for
from storage_schemas.pixels.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.plumbing.identity import SampleId, stable_hash64
from storage_schemas.store import TargetStore, table_files
from storage_schemas.store.clip_views import ClipViews
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.mask_logits import decode_logits
from storage_schemas.store.sam_tables import SamPrompts
from storage_schemas.store.tar_index import read_spans
from storage_schemas.store.unit_tar import check_input, unit_tar
from student.data.epoch_plan import unit_id
from student.data.pieces import Keep, choose_view, load_sam_piece, read_whole, split_filter, unit_pieces

__all__ = [
    "ClipSample",
    "SamSample",
    "Keep",
    "check_input",
    "choose_prompts",
    "choose_view",
    "iter_clip_unit",
    "iter_sam_unit",
    "split_filter",
    "unit_id",
]


def _everything(_: SampleId) -> bool:
    return True


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

    @staticmethod
    def decode(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """An encoded image decoded by the shared rule for rendering views of `size` px."""
        return decode_image(data, max_pixels, draft_side_for(size)).image

    def image(self, size: int) -> Image.Image:
        return self.decode(self.data, size, self.max_pixels)


def iter_clip_unit(
    store: TargetStore,
    record: CommitRecord,
    keep: Keep | None = None,
    storage_options: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[ClipSample]:
    """The stored samples of one committed CLIP unit (those `keep` accepts), in order."""
    keep = keep or _everything
    tar = None
    files = table_files(record, "views")
    for piece in unit_pieces(store, record, keep).pieces:
        if not piece.count:
            continue
        table = pa.concat_tables([pq.read_table(read_whole(store.storage, files[j])) for j in piece.parts])
        v = ClipViews.from_table(table)
        rows = [n for n, k in enumerate(v.keys) if keep(SampleId(record.source, record.shard, k))]
        tar = tar or unit_tar(store, record, storage_options)
        images = read_spans(storage_options, tar.image_spans(v.sample_index[rows], [v.keys[n] for n in rows]))
        for n, data in zip(rows, images):
            yield ClipSample(
                SampleId(record.source, record.shard, v.keys[n]),
                int(v.sample_index[n]),
                data,
                v.crops[n],
                v.flips[n],
                list(v.pixel_hashes[n]),
                v.embeddings[n],
                max_pixels,
            )


@dataclass
class SamSample:
    identity: SampleId
    sample_index: int
    data: bytes = field(repr=False)
    original_hw: tuple[int, int]
    prompts: SamPrompts
    _stored_logits: Callable[[], np.ndarray] = field(repr=False)
    precision: str  # of the stored logits (storage_schemas.store.mask_logits)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def sam_input(self) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 [1024, 1024, 3] (resized image top-left, zeros elsewhere) and the resized (h, w)."""
        resized = sam_input_image(np.asarray(decode_image(self.data, self.max_pixels).image))
        return pad_image(resized), resized.shape[:2]

    def logits(self) -> np.ndarray:
        """The teacher's round-0 low-res logits: float32 [P, M, 256, 256] (reads the image's chunk)."""
        return decode_logits(self._stored_logits(), self.precision)

    def stored_logits(self) -> np.ndarray:
        """The same logits in their storage dtype: [P, M, 256, 256] float16 or uint8."""
        return self._stored_logits()

    def prompts_1024(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [p, 4] and points [p, n, 2] of the chosen prompts in the 1024 px frame."""
        boxes = sam_boxes(self.prompts.boxes[chosen], self.original_hw).astype(np.float32)
        points = sam_points(self.prompts.points[chosen], self.original_hw).astype(np.float32)
        return boxes, points


def iter_sam_unit(
    store: TargetStore,
    record: CommitRecord,
    keep: Keep | None = None,
    storage_options: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[SamSample]:
    """The stored images of one committed SAM unit (those `keep` accepts), in order."""
    keep = keep or _everything
    manifest = store.manifest("sam")
    precision, points = manifest.must_match["precision"], manifest.must_match["policy"]["points_per_prompt"]
    tar = None
    for piece in unit_pieces(store, record, keep).pieces:
        if not piece.count:
            continue
        t = load_sam_piece(store, record, piece, keep, precision, points)
        tar = tar or unit_tar(store, record, storage_options)
        images = read_spans(storage_options, tar.image_spans(t.positions, t.keys))
        for i, data in enumerate(images):
            yield SamSample(
                SampleId(record.source, record.shard, t.keys[i]),
                int(t.positions[i]),
                data,
                (int(t.hw[i, 0]), int(t.hw[i, 1])),
                t.prompts[i],
                lambda t=t, i=i: t.stored_logits(i),
                precision,
                max_pixels,
            )


def choose_prompts(seed: int, epoch: int, sample: SampleId, n_stored: int, n: int) -> np.ndarray:
    """`n` of an image's stored prompts (all if it has fewer), a stable draw per epoch: int64 [<= n]."""
    rng = np.random.default_rng(stable_hash64("prompt-choice", seed, epoch, *sample))
    return np.sort(rng.permutation(n_stored)[:n])
