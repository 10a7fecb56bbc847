"""CLIP targets as a streaming Ray Data job: read + decode + render (CPU tasks) -> teacher actors
that write the parts -> per-unit commit on the driver.

    units ──flat_map(read_clip_shard)──> one row per sample: K rendered views, uint8 [K, S, S, 3]
          ──map_batches(ClipTeacherStage, ActorPoolStrategy)──> clip/SOURCE/UNIT/PART.parquet;
                                                                one metadata row per part
          ──driver: UnitCollector──> _errors/..., _commits/... (last)

A read task handles one shard and yields its samples one at a time, so no stage holds a shard's
decoded pixels at once; Ray cuts the stream into blocks and the teacher actors consume them while
later samples decode. A shard is one unit, or parts of `unit_size` samples; each unit ends with an
`end` row carrying its sample count (the stream is read once, whatever the parts); the driver
commits a unit once its parts and errors cover that many distinct samples, dropping a part that
overlaps one already accepted because Ray re-runs a batch whose worker died.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.config import ClipTeacherConfig
from pipeline.parts import teacher_batch_output
from pipeline.sources import sidecar_success_counts
from pipeline.units import ERROR, ShardTask, read_shard
from storage_schemas.clip_views_table import ClipViews, views_parquet
from storage_schemas.decode import DecodeError, decode_image, draft_side_for
from storage_schemas.identity import SampleId
from storage_schemas.storage import FileEntry, Storage
from storage_schemas.store import TABLE_SUFFIX
from storage_schemas.tar_samples import TarSample
from storage_schemas.views import render_view, sample_views, view_hash

@dataclass(frozen=True)
class RenderSpec:
    """Everything a read task needs to turn bytes into views (pickled to the tasks)."""

    seed: int
    views: int
    size: int  # the teacher's input size
    interpolation: str
    resize_mode: str  # the teacher's view-0 rule (storage_schemas.views.RESIZE_MODES)
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    max_pixels: int

    @property
    def draft_side(self) -> int:
        return draft_side_for(self.size)


def blank_clip_row(task: ShardTask, spec: RenderSpec, status: str, part: int) -> dict[str, Any]:
    """The row protocol of pipeline.units plus the CLIP columns, zero-filled."""
    k, s = spec.views, spec.size
    return {**task.base_row(status, part),
            "pixels": np.zeros((k, s, s, 3), np.uint8), "crops": np.zeros((k, 4), np.float32),
            "flips": np.zeros(k, bool), "hashes": "", "width": 0, "height": 0}


def read_clip_shard(row: dict[str, Any], spec: RenderSpec) -> Iterator[dict[str, Any]]:
    """Ray flat_map UDF: one shard -> one row per sample (K rendered views), `end` rows per unit."""
    yield from read_shard(row, lambda row, sample: render_sample(row, spec, sample),
                          lambda task, status, part: blank_clip_row(task, spec, status, part), _sidecar_note)


def render_sample(row: dict[str, Any], spec: RenderSpec, sample: TarSample) -> dict[str, Any]:
    """Decode once, render all K views; a sample that cannot be used becomes an error row."""
    image = sample.image()
    try:
        if image is None:
            raise DecodeError("missing_image", f"no member with an image extension among {sample.member_names()}")
        decoded = decode_image(image[1], spec.max_pixels, spec.draft_side)
    except DecodeError as e:
        row.update(status=ERROR, reason=e.reason, detail=e.detail)
        return row
    w, h = decoded.image.size
    views = sample_views(spec.seed, SampleId(row["source"], row["shard"], sample.key), w, h, spec.views, spec.size,
                         spec.scale, spec.ratio, spec.flip, spec.resize_mode)
    hashes = []
    for v in views:
        pixels = render_view(decoded.image, v.crop, v.flip, spec.size, spec.interpolation)
        row["pixels"][v.index] = pixels
        row["crops"][v.index] = v.crop
        row["flips"][v.index] = v.flip
        hashes.append(view_hash(pixels))
    row.update(hashes=",".join(hashes), width=decoded.full_size[0], height=decoded.full_size[1])
    return row


def _sidecar_note(task: ShardTask, options: dict, count: int) -> str:
    """img2dataset's success counts must equal the tar's samples; say so where they don't."""
    try:
        counts = sidecar_success_counts(task.url, options)
    except Exception as e:  # a sidecar is optional; an unreadable one is reported, not fatal
        return f"img2dataset sidecar unreadable ({type(e).__name__}: {e})"
    bad = [f"{name} says {n} successes" for name, n in counts.items() if n != count]
    return f"img2dataset {'; '.join(bad)}, the tar holds {count} samples" if bad else ""


class ClipTeacherStage:
    """Ray actor UDF: loads the teacher once, turns uint8 views into normalised embeddings and
    writes them, one views part per unit of the batch; returns the parts' metadata.

    Normalisation runs on the teacher's device, so pixels travel as uint8 (4x less than float).
    """

    def __init__(self, teacher_cfg: ClipTeacherConfig, storage: Storage, compute_dtype: str, threads: int):
        from pipeline.teachers import load_clip_teacher

        torch.set_num_threads(max(1, threads))
        self.storage = storage
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = load_clip_teacher(teacher_cfg, storage.storage_options, device=self.device)
        pp = self.teacher.fingerprint.preprocess
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: uint8 [N, S, S, 3] -> float16 [N, D], L2-normalised."""
        x = torch.from_numpy(np.array(pixels)).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        with torch.autocast(self.device, dtype=self.autocast, enabled=self.autocast is not None):
            emb = self.teacher.encode_images(x)
        return emb.to(torch.float16).cpu().numpy()

    def write_part(self, rows: dict[str, np.ndarray], part_rel: str) -> tuple[list[FileEntry], dict[str, int]]:
        """Embed one unit's ok rows and write them as the views part `part_rel`.parquet."""
        pixels = rows["pixels"]
        n, k = pixels.shape[:2]
        emb = self.embed(pixels.reshape(n * k, *pixels.shape[2:])).reshape(n, k, -1)
        views = ClipViews(rows["sample_index"].astype(np.int32), [str(x) for x in rows["key"]],
                          rows["width"].astype(np.int32), rows["height"].astype(np.int32), rows["crops"],
                          rows["flips"], np.asarray([h.split(",") for h in rows["hashes"]], dtype=object), emb)
        entry = self.storage.write_bytes(part_rel + TABLE_SUFFIX[("clip", "views")],
                                         views_parquet(views, str(rows["source"][0]), str(rows["shard"][0])))
        return [entry], {"views": n * k}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return teacher_batch_output("clip", batch, self.write_part, self.storage)
