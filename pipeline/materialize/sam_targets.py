"""SAM targets as a streaming Ray Data job: read SA-1B pairs (CPU tasks, bytes only) -> SAM teacher
actors that decode, sample prompts, run SAM and write the parts -> per-unit commit on the driver.

    shards ──flat_map(read_sam_shard)──> one row per image: its JPEG and JSON bytes
           ──map_batches(SamTeacherStage)──> sam/SOURCE/UNIT/PART.{parquet,images.parquet,zarr};
                                             one metadata row per part
           ──driver: UnitCollector──> _errors/..., _commits/... (last)

The teacher runs as `SamPredictor` would: one image-encoder pass per image, then the decoder over
the image's prompts in groups of one structure (box, points, box + points), since padding
prompts of different structure into one call changes the logits. With `rounds: 2` each prompt is
decoded again with its round-0 logits as the mask prompt.

Where the time goes, and why it is arranged so: decoding and resizing a 2250x1500 SA-1B JPEG
(~30 ms) and sampling its prompts run on the actor's thread pool while the GPU works on earlier
images; logits are quantised to the stored dtype on the device, so 2-4x fewer bytes come back;
the Zarr encoding (zstd) and the PUTs of a part run outside the GPU lock, while the actor's other
call (`ray.calls_per_actor`) has the GPU. The actor that made a part's logits is the only writer
of its Zarr group: one shard object per part.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.config import SamConfig
from pipeline.materialize.parts import PartWritten, row_sample_id, teacher_batch_output
from pipeline.materialize.sam_prompts import AnnotationError, parse_sa1b_json, sample_prompts, usable_annotations
from pipeline.materialize.units import ERROR, read_shard
from storage_schemas.pixels.decode import decode_image
from storage_schemas.pixels.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.pixels.tar_samples import TarSample
from storage_schemas.plumbing.identity import SampleId, sample_seed
from storage_schemas.plumbing.sample_errors import SampleError
from storage_schemas.store import TABLE_SUFFIX
from storage_schemas.store.commit import new_attempt_id
from storage_schemas.store.mask_logits import LOW_RES, encode_logits, fill_value, logits_group_objects, num_masks
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.sam_tables import images_table, prompts_table
from storage_schemas.store.tables import PROMPT_STRUCTURES, STRUCTURE_PARTS, parquet_bytes


@dataclass(frozen=True)
class PromptSpec:
    """What an actor needs to sample prompts."""

    seed: int
    sam: SamConfig
    max_pixels: int


def read_sam_shard(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ray flat_map UDF: one read task -> one row per image (its JPEG and JSON bytes), `end` rows per unit."""
    yield from read_shard(row, ship_pair, {"image": b"", "annotation": b""})


def ship_pair(row: dict[str, Any], sample: TarSample) -> dict[str, Any]:
    members, image = sample.member_names(), sample.image()
    if image is None:
        row.update(status=ERROR, reason="missing_image", detail=f"no image member among {members}")
    elif "json" not in sample.members:
        row.update(status=ERROR, reason="missing_json", detail=f"no annotation JSON among {members}")
    else:
        row.update(image=image[1], annotation=sample.members["json"])
    return row


PREDICT_INPUTS = ("input_hw", "original_hw", "structure", "boxes", "points", "labels")


def predict_inputs(prepared: dict[str, Any]) -> dict[str, Any]:
    """A `prepare_image` result, less its image, as `SamTeacherStage.predict_image`'s keyword arguments."""
    return {**{k: prepared[k] for k in PREDICT_INPUTS}, "n_prompts": int(prepared["n_prompts"])}


def prepare_image(spec: PromptSpec, sample: SampleId, image: bytes, annotation: bytes) -> dict[str, Any]:
    """Decode, sample prompts, resize for SAM. Raises a SampleError (DecodeError, AnnotationError) if unusable.
    -> image uint8 [1024, 1024, 3] (padded), input_hw, original_hw int32 [2], n_prompts, n_annotations,
       skipped (JSON), structure int8 [P], annotation_id int64 [P], boxes float32 [P, 4],
       points float32 [P, N, 2], labels int8 [P, N] (P = sam.prompts, zero beyond n_prompts)."""
    _, anns = parse_sa1b_json(annotation)
    rgb = np.asarray(decode_image(image, spec.max_pixels).image)
    h, w = rgb.shape[:2]
    usable, skipped = usable_annotations(anns, h, w)
    if not usable:
        raise AnnotationError("no_usable_annotation", f"{len(anns)} annotations, skipped: {dict(skipped)}")
    rng = np.random.default_rng(sample_seed(spec.seed, sample, "prompts"))
    prompts = sample_prompts(rng, usable, spec.sam, h, w)
    resized = sam_input_image(rgb)
    p, n = spec.sam.prompts, spec.sam.points_per_prompt
    out = {
        "image": pad_image(resized),
        "input_hw": np.array(resized.shape[:2], np.int32),
        "original_hw": np.array([h, w], np.int32),
        "n_prompts": len(prompts),
        "n_annotations": len(anns),
        "skipped": json.dumps(dict(skipped)),
        "structure": np.full(p, -1, np.int8),
        "annotation_id": np.zeros(p, np.int64),
        "boxes": np.zeros((p, 4), np.float32),
        "points": np.zeros((p, n, 2), np.float32),
        "labels": np.zeros((p, n), np.int8),
    }
    for i, prompt in enumerate(prompts):
        out["structure"][i] = PROMPT_STRUCTURES.index(prompt.structure)
        out["annotation_id"][i] = prompt.annotation_id
        if prompt.box is not None:
            out["boxes"][i] = prompt.box
        out["points"][i, : len(prompt.points)] = prompt.points
        out["labels"][i, : len(prompt.labels)] = prompt.labels
    return out


class SamTeacherStage:
    """Ray actor UDF: loads SAM once; per image one encoder pass, the decoder per prompt structure."""

    def __init__(
        self,
        spec: PromptSpec,
        storage: StoreRoot,
        compute_dtype: str,
        threads: int,
        render_threads: int | None = None,
        attempt: str | None = None,
    ):
        from pipeline.teachers import load_sam_teacher

        torch.set_num_threads(max(1, threads))
        self.storage, self.spec, self.attempt = storage, spec, attempt or new_attempt_id()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = load_sam_teacher(spec.sam.teacher, storage.storage_options, device=self.device)
        self.sam = self.teacher.sam
        self.cfg = spec.sam
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype)
        self.pool = ThreadPoolExecutor(max(1, render_threads or threads), thread_name_prefix="prepare")
        self.gpu = threading.Lock()  # one call on the device at a time; the other compresses and writes

    @torch.no_grad()
    def predict_image_device(
        self, image: np.ndarray, *, input_hw, original_hw, structure, boxes, points, labels, n_prompts: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits float32 [P * rounds, M, 256, 256] (NaN beyond n_prompts), iou float32 [P * rounds, M],
        both on the device."""
        cfg, sam, dev = self.cfg, self.sam, self.device
        slots = cfg.prompts * cfg.rounds
        logits = torch.full((slots, num_masks(cfg.multimask), LOW_RES, LOW_RES), torch.nan, device=dev)
        iou = torch.full((slots, num_masks(cfg.multimask)), torch.nan, device=dev)
        h, w = (int(v) for v in input_hw)
        original = (int(original_hw[0]), int(original_hw[1]))
        x = torch.from_numpy(np.ascontiguousarray(image[:h, :w])).to(dev).permute(2, 0, 1)[None].float()
        with torch.autocast(dev, dtype=self.autocast, enabled=self.autocast is not None):
            embedding = sam.image_encoder(sam.preprocess(x))
            for s, (has_box, has_points) in STRUCTURE_PARTS.items():
                idx = np.flatnonzero(structure[:n_prompts] == s)
                if not len(idx):
                    continue
                box_t = pts = None
                if has_box:
                    box_t = torch.as_tensor(sam_boxes(boxes[idx], original), dtype=torch.float, device=dev)
                if has_points:
                    coords = torch.as_tensor(sam_points(points[idx], original), dtype=torch.float, device=dev)
                    pts = (coords, torch.as_tensor(labels[idx], dtype=torch.int, device=dev))
                mask_input = None
                for r in range(cfg.rounds):
                    sparse, dense = sam.prompt_encoder(points=pts, boxes=box_t, masks=mask_input)
                    low, pred_iou = sam.mask_decoder(
                        image_embeddings=embedding,
                        image_pe=sam.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense,
                        multimask_output=cfg.multimask,
                    )
                    slot = torch.as_tensor(r * cfg.prompts + idx, device=dev)
                    logits[slot] = low.float()
                    iou[slot] = pred_iou.float()
                    best = pred_iou.argmax(dim=1)  # the mask fed back, as SAM's interactive loop does
                    mask_input = low[torch.arange(len(idx), device=low.device), best][:, None].float()
        return logits, iou

    def predict_image(self, image: np.ndarray, **prompts) -> tuple[np.ndarray, np.ndarray]:
        """`predict_image_device` with the results on the host as numpy."""
        logits, iou = self.predict_image_device(image, **prompts)
        return logits.cpu().numpy(), iou.cpu().numpy()

    def stored_logits(self, logits: torch.Tensor, n_prompts: int) -> torch.Tensor:
        """logits [slots, M, 256, 256] on the device -> the storage dtype, padding slots at the fill value."""
        cfg = self.cfg
        stored = encode_logits(logits.nan_to_num(0.0), cfg.precision)
        for r in range(cfg.rounds):
            stored[r * cfg.prompts + n_prompts : (r + 1) * cfg.prompts] = torch.as_tensor(fill_value(cfg.precision))
        return stored

    def write_part(self, rows: dict[str, np.ndarray], part_rel: str) -> PartWritten:
        """Prepare one unit's ok rows on the pool, run the teacher on those that decoded, write the
        part: prompts, images, logits."""
        n = len(rows["key"])
        futures = [
            self.pool.submit(prepare_image, self.spec, row_sample_id(rows, i), rows["image"][i], rows["annotation"][i])
            for i in range(n)
        ]
        samples, stored, failed = [], [], {}
        try:
            with self.gpu:
                for i in range(n):
                    try:
                        s = futures[i].result()
                    except SampleError as e:
                        failed[i] = (e.reason, e.detail)
                        continue
                    logits, iou = self.predict_image_device(s["image"], **predict_inputs(s))
                    stored.append(self.stored_logits(logits, int(s["n_prompts"])))
                    del s["image"]
                    samples.append({**{c: rows[c][i] for c in ("key", "sample_index")}, **s, "iou": iou})
                host = torch.stack(stored).cpu().numpy() if stored else None
                for s in samples:
                    s["iou"] = s["iou"].cpu().numpy()
        finally:
            wait(futures)
        if host is None:
            return PartWritten([], {}, failed)
        cfg, m = self.cfg, num_masks(self.cfg.multimask)
        source, shard = str(rows["source"][0]), str(rows["shard"][0])
        prompts = prompts_table(
            source,
            shard,
            samples,
            prompts=cfg.prompts,
            rounds=cfg.rounds,
            points_per_prompt=cfg.points_per_prompt,
            masks=m,
        )
        files = [
            self.storage.write_bytes(part_rel + TABLE_SUFFIX[("sam", "prompts")], parquet_bytes(prompts)),
            self.storage.write_bytes(
                part_rel + TABLE_SUFFIX[("sam", "images")], parquet_bytes(images_table(source, shard, samples))
            ),
        ]
        files += [
            self.storage.write_bytes(f"{part_rel}{TABLE_SUFFIX[('sam', 'logits')]}/{key}", data)
            for key, data in sorted(logits_group_objects(host, cfg.precision).items())
        ]
        return PartWritten(files, {"prompts": prompts.num_rows, "images": len(samples)}, failed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return teacher_batch_output("sam", batch, self.write_part, self.storage, self.attempt)
