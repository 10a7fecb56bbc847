"""CLIP targets as a streaming Ray Data job: read (CPU tasks, bytes only) -> teacher actors that
decode, render, embed and write the parts -> per-unit commit on the driver.

    units ──flat_map(read_clip_shard)──> one row per sample: its encoded image bytes
          ──map_batches(ClipTeacherStage, ActorPoolStrategy)──> clip/SOURCE/UNIT/PART.parquet;
                                                                one metadata row per part
          ──driver: UnitCollector──> _errors/..., _commits/... (last)

What crosses the object store is the JPEG as it sits in the tar, not K rendered views (~1.5 MB a
sample at K=10, 224 px): the actor decodes and renders next to the teacher, on a thread pool
(Pillow releases the GIL while it decodes and resamples), into pinned host memory, and hands the
GPU one chunk of views while the pool renders the next. A sample whose image cannot be decoded
becomes an error row there. A read task handles one shard (or, with a tar index, one unit) and
yields its samples one at a time; each unit ends with an `end` row carrying its sample count; the
driver commits a unit once its parts and errors cover that many distinct samples, dropping a part
that overlaps one already accepted because Ray re-runs a batch whose worker died.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.config import ClipTeacherConfig, JobConfig, ViewPolicy
from pipeline.materialize.parts import PartWritten, row_sample_id, teacher_batch_output
from pipeline.materialize.sources import sidecar_success_counts
from pipeline.materialize.units import ERROR, ShardTask, read_shard
from storage_schemas.pixels.decode import DecodeError, decode_image, draft_side_for
from storage_schemas.pixels.tar_samples import TarSample
from storage_schemas.pixels.views import render_view, sample_views, view_hash
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store import TABLE_SUFFIX
from storage_schemas.store.clip_views import ClipViews, views_parquet
from storage_schemas.store.commit import new_attempt_id
from storage_schemas.store.root import StoreRoot

# Views per GPU launch: small enough that the first chunk starts the GPU early, large enough to fill it.
CHUNK_VIEWS = 256


@dataclass(frozen=True)
class RenderSpec:
    """Everything an actor needs to turn bytes into views."""

    seed: int
    views: int
    size: int  # the teacher's input size
    interpolation: str
    resize_mode: str  # the teacher's view-0 rule (storage_schemas.pixels.views.RESIZE_MODES)
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    max_pixels: int

    @property
    def draft_side(self) -> int:
        return draft_side_for(self.size)

    @classmethod
    def of(cls, preprocess: dict, seed: int, views: int, policy: ViewPolicy, max_pixels: int) -> "RenderSpec":
        """Views by `policy` at a teacher's preprocessing (its fingerprint's `preprocess`)."""
        return cls(
            seed=seed,
            views=views,
            size=preprocess["size"][0],
            interpolation=preprocess["interpolation"],
            resize_mode=preprocess["resize_mode"],
            scale=tuple(policy.scale),
            ratio=tuple(policy.ratio),
            flip=policy.flip,
            max_pixels=max_pixels,
        )

    @classmethod
    def of_job(cls, cfg: JobConfig, must_match: dict) -> "RenderSpec":
        """The job's views with its teacher's preprocessing (from the CLIP manifest's must-match fields)."""
        return cls.of(
            must_match["teacher"]["preprocess"], cfg.seed, cfg.clip.views, cfg.clip.view_policy, cfg.max_image_pixels
        )


@dataclass
class RenderedSample:
    crops: np.ndarray  # float32 [K, 4]
    flips: np.ndarray  # bool [K]
    hashes: list[str]  # K pixel hashes
    width: int  # full-resolution, EXIF-corrected size
    height: int


def read_clip_shard(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray flat_map UDF: one read task -> one row per sample (its image bytes), `end` rows per unit."""
    yield from read_shard(row, ship_image, {"image": b""}, _sidecar_note)


def ship_image(row: dict[str, Any], sample: TarSample) -> dict[str, Any]:
    image = sample.image()
    if image is None:
        row.update(
            status=ERROR,
            reason="missing_image",
            detail=f"no member with an image extension among {sample.member_names()}",
        )
    else:
        row["image"] = image[1]
    return row


def render_sample(spec: RenderSpec, sample: SampleId, data: bytes, out: np.ndarray) -> RenderedSample:
    """Decode once and render the K views into out: uint8 [K, S, S, 3]. Raises DecodeError."""
    decoded = decode_image(data, spec.max_pixels, spec.draft_side)
    w, h = decoded.image.size
    views = sample_views(
        spec.seed,
        sample,
        width=w,
        height=h,
        n_views=spec.views,
        size=spec.size,
        scale=spec.scale,
        ratio=spec.ratio,
        flip=spec.flip,
        resize_mode=spec.resize_mode,
    )
    crops, flips, hashes = np.zeros((spec.views, 4), np.float32), np.zeros(spec.views, bool), []
    for v in views:
        out[v.index] = render_view(decoded.image, v.crop, v.flip, spec.size, spec.interpolation)
        crops[v.index], flips[v.index] = v.crop, v.flip
        hashes.append(view_hash(out[v.index]))
    return RenderedSample(crops, flips, hashes, *decoded.full_size)


def _sidecar_note(task: ShardTask, options: dict, count: int) -> str:
    """img2dataset's success counts must equal the tar's samples; say so where they don't."""
    try:
        counts = sidecar_success_counts(task.url, options)
    except Exception as e:  # a sidecar is optional; an unreadable one is reported, not fatal
        return f"img2dataset sidecar unreadable ({type(e).__name__}: {e})"
    bad = [f"{name} says {n} successes" for name, n in counts.items() if n != count]
    return f"img2dataset {'; '.join(bad)}, the tar holds {count} samples" if bad else ""


class ClipTeacherStage:
    """Ray actor UDF: loads the teacher once; per unit of a batch, renders the views on a thread
    pool, embeds them and writes one views part; returns the parts' metadata.

    Views travel to the device as uint8 (4x less than float) and are normalised there.
    """

    def __init__(
        self,
        teacher_cfg: ClipTeacherConfig,
        spec: RenderSpec | None,
        storage: StoreRoot,
        compute_dtype: str,
        threads: int,
        render_threads: int | None = None,
        attempt: str | None = None,
    ):
        """spec: the views to render; None for a stage that only embeds given pixels (`embed`), or
        whose caller sets it once the teacher's preprocessing is known (`RenderSpec.of`).
        attempt: the job attempt whose parts this stage writes (a fresh id if not given)."""
        from pipeline.teachers import load_clip_teacher

        torch.set_num_threads(max(1, threads))
        self.spec, self.storage, self.attempt = spec, storage, attempt or new_attempt_id()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = load_clip_teacher(teacher_cfg, storage.storage_options, device=self.device)
        pp = self.teacher.fingerprint.preprocess
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1) * 255.0
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype)
        self.pool = ThreadPoolExecutor(max(1, render_threads or threads), thread_name_prefix="render")
        self.gpu = threading.Lock()  # one call on the device at a time; the other renders and writes
        self.buffers = threading.local()  # each concurrent call (`ray.calls_per_actor`) has its own

    def embed_async(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: uint8 [N, S, S, 3] on the host -> float16 [N, D] on the device, L2-normalised.
        On a GPU this only queues the work: the copy is non-blocking from pinned memory."""
        x = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        with torch.autocast(self.device, dtype=self.autocast, enabled=self.autocast is not None):
            emb = self.teacher.encode_images(x)
        return emb.to(torch.float16)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """pixels: uint8 [N, S, S, 3] -> float16 [N, D], L2-normalised."""
        return self.embed_async(torch.from_numpy(np.ascontiguousarray(pixels))).cpu().numpy()

    def views_buffer(self, n: int) -> torch.Tensor:
        """uint8 [n, K, S, S, 3] host memory, pinned where there is a GPU, reused by the calling
        thread's next batch: this one's copies are done once its embeddings came back."""
        k, s = self.spec.views, self.spec.size
        buffer = getattr(self.buffers, "views", None)
        if buffer is None or len(buffer) < n:
            buffer = self.buffers.views = torch.empty(
                (n, k, s, s, 3), dtype=torch.uint8, pin_memory=self.device == "cuda"
            )
        return buffer[:n]

    def render_and_embed(self, rows: dict[str, np.ndarray]) -> tuple[dict[int, RenderedSample], np.ndarray, dict]:
        """Render every row's views on the pool; embed chunk by chunk as they finish.
        -> ({row: RenderedSample} of the rows that decoded, float16 [rendered, K, D] in row order,
            {row: (reason, detail)} of those that did not)."""
        n, k = len(rows["key"]), self.spec.views
        pixels = self.views_buffer(n)
        out = pixels.numpy()
        futures = [
            self.pool.submit(render_sample, self.spec, row_sample_id(rows, i), rows["image"][i], out[i])
            for i in range(n)
        ]
        rendered, failed, embedded = {}, {}, []
        chunk = max(1, CHUNK_VIEWS // k)
        try:
            with self.gpu:
                for a in range(0, n, chunk):
                    good = []
                    for i in range(a, min(n, a + chunk)):
                        try:
                            rendered[i] = futures[i].result()
                            good.append(i)
                        except DecodeError as e:
                            failed[i] = (e.reason, e.detail)
                    if good:
                        # Consecutive rows (no decode error in the chunk) are a view of the buffer, not a copy.
                        views = pixels[good[0] : good[-1] + 1] if good[-1] - good[0] + 1 == len(good) else pixels[good]
                        embedded.append(self.embed_async(views.reshape(-1, *views.shape[2:])))
                emb = (
                    torch.cat(embedded).cpu().numpy() if embedded else np.zeros((0, self.teacher.embed_dim), np.float16)
                )
        finally:
            wait(futures)  # no render may still write into the buffer the next batch reuses
        return rendered, emb.reshape(len(rendered), k, -1), failed

    def write_part(self, rows: dict[str, np.ndarray], part_rel: str) -> PartWritten:
        """Render and embed one unit's ok rows and write those that decoded as `part_rel`.parquet."""
        rendered, emb, failed = self.render_and_embed(rows)
        if not rendered:
            return PartWritten([], {}, failed)
        keep = sorted(rendered)
        views = ClipViews(
            rows["sample_index"][keep].astype(np.int32),
            [str(rows["key"][i]) for i in keep],
            np.array([rendered[i].width for i in keep], np.int32),
            np.array([rendered[i].height for i in keep], np.int32),
            np.stack([rendered[i].crops for i in keep]),
            np.stack([rendered[i].flips for i in keep]),
            np.array([rendered[i].hashes for i in keep], dtype=object),
            emb,
        )
        entry = self.storage.write_bytes(
            part_rel + TABLE_SUFFIX[("clip", "views")],
            views_parquet(views, str(rows["source"][0]), str(rows["shard"][0])),
        )
        return PartWritten([entry], {"views": len(keep) * self.spec.views}, failed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return teacher_batch_output("clip", batch, self.write_part, self.storage, self.attempt)
