"""SAM targets as a streaming Ray Data job: read SA-1B pairs + sample prompts (CPU tasks) -> SAM
teacher actors that write the parts -> per-unit commit on the driver.

    shards ──flat_map(read_sam_shard)──> one row per image: uint8 1024 px input, P prompts
           ──map_batches(SamTeacherStage)──> sam/SOURCE/UNIT/PART.{parquet,images.parquet,zarr};
                                             one metadata row per part
           ──driver: UnitCollector──> _errors/..., _commits/... (last)

The teacher runs as `SamPredictor` would: one image-encoder pass per image, then the decoder over
the image's prompts in groups of one structure (box, points, box + points), since padding
prompts of different structure into one call changes the logits. With `rounds: 2` each prompt is
decoded again with its round-0 logits as the mask prompt. The actor that made a part's logits is
the only writer of its Zarr group.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.config import SamConfig, SamTeacherConfig
from pipeline.sam_prompts import parse_sa1b_json, sample_prompts, usable_annotations
from pipeline.parts import teacher_batch_output
from pipeline.units import ERROR, ShardTask, read_shard
from storage_schemas.decode import DecodeError, decode_image
from storage_schemas.identity import SampleId, sample_seed
from storage_schemas.mask_logits import (
    LOW_RES, encode_logits, fill_value, logits_group_objects, num_masks, storage_dtype,
)
from storage_schemas.sam_models import IMAGE_SIZE
from storage_schemas.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.storage import FileEntry, Storage
from storage_schemas.store import TABLE_SUFFIX
from storage_schemas.sam_tables import images_table, prompts_table
from storage_schemas.tables import PROMPT_STRUCTURES, STRUCTURE_PARTS, parquet_bytes
from storage_schemas.tar_samples import TarSample


@dataclass(frozen=True)
class PromptSpec:
    """What a read task needs to sample prompts (pickled to the tasks)."""

    seed: int
    sam: SamConfig
    max_pixels: int


def blank_sam_row(task: ShardTask, spec: PromptSpec, status: str, part: int) -> dict[str, Any]:
    p, n = spec.sam.prompts, spec.sam.points_per_prompt
    return {**task.base_row(status, part),
            "image": np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), "input_hw": np.zeros(2, np.int32),
            "original_hw": np.zeros(2, np.int32), "n_prompts": 0, "n_annotations": 0, "skipped": "{}",
            "structure": np.full(p, -1, np.int8), "annotation_id": np.zeros(p, np.int64),
            "boxes": np.zeros((p, 4), np.float32), "points": np.zeros((p, n, 2), np.float32),
            "labels": np.zeros((p, n), np.int8)}


def read_sam_shard(row: dict[str, Any], spec: PromptSpec) -> Iterator[dict[str, Any]]:
    """Ray flat_map UDF: one SA-1B shard -> one row per image, `end` rows per unit."""
    yield from read_shard(row, lambda row, sample: prepare_image(row, spec, sample),
                          lambda task, status, part: blank_sam_row(task, spec, status, part))


def prepare_image(row: dict[str, Any], spec: PromptSpec, sample: TarSample) -> dict[str, Any]:
    """Decode, sample prompts, resize for SAM; an unusable sample becomes an error row."""
    members = sample.member_names()
    image = sample.image()
    try:
        if image is None:
            raise DecodeError("missing_image", f"no image member among {members}")
        if "json" not in sample.members:
            raise DecodeError("missing_json", f"no annotation JSON among {members}")
        _, anns = parse_sa1b_json(sample.members["json"])
        rgb = np.asarray(decode_image(image[1], spec.max_pixels).image)
        h, w = rgb.shape[:2]
        usable, skipped = usable_annotations(anns, h, w)
        if not usable:
            raise DecodeError("no_usable_annotation", f"{len(anns)} annotations, skipped: {dict(skipped)}")
    except DecodeError as e:
        row.update(status=ERROR, reason=e.reason, detail=e.detail)
        return row
    rng = np.random.default_rng(sample_seed(spec.seed, SampleId(row["source"], row["shard"], sample.key), "prompts"))
    prompts = sample_prompts(rng, usable, spec.sam, h, w)
    resized = sam_input_image(rgb)
    row.update(image=pad_image(resized), input_hw=np.array(resized.shape[:2], np.int32),
               original_hw=np.array([h, w], np.int32), n_prompts=len(prompts), n_annotations=len(anns),
               skipped=json.dumps(dict(skipped)))
    for i, p in enumerate(prompts):
        row["structure"][i] = PROMPT_STRUCTURES.index(p.structure)
        row["annotation_id"][i] = p.annotation_id
        if p.box is not None:
            row["boxes"][i] = p.box
        row["points"][i, : len(p.points)] = p.points
        row["labels"][i, : len(p.labels)] = p.labels
    return row


class SamTeacherStage:
    """Ray actor UDF: loads SAM once; per image one encoder pass, the decoder per prompt structure."""

    def __init__(self, teacher_cfg: SamTeacherConfig, sam_cfg: SamConfig, storage: Storage,
                 compute_dtype: str, threads: int):
        from pipeline.teachers import load_sam_teacher

        torch.set_num_threads(max(1, threads))
        self.storage = storage
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = load_sam_teacher(teacher_cfg, storage.storage_options, device=self.device)
        self.sam = self.teacher.sam
        self.cfg = sam_cfg
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute_dtype)

    @torch.no_grad()
    def predict_image(self, image: np.ndarray, input_hw, original_hw, structure, boxes, points, labels,
                      n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
        """-> logits float32 [P * rounds, M, 256, 256] (NaN beyond n_prompts), iou float32 [P * rounds, M]."""
        cfg, sam = self.cfg, self.sam
        m = num_masks(cfg.multimask)
        slots = cfg.prompts * cfg.rounds
        logits = np.full((slots, m, LOW_RES, LOW_RES), np.nan, np.float32)
        iou = np.full((slots, m), np.nan, np.float32)
        h, w = (int(v) for v in input_hw)
        original = (int(original_hw[0]), int(original_hw[1]))
        x = torch.from_numpy(np.array(image[:h, :w])).to(self.device).permute(2, 0, 1)[None].float()
        with torch.autocast(self.device, dtype=self.autocast, enabled=self.autocast is not None):
            embedding = sam.image_encoder(sam.preprocess(x))
            for s, (has_box, has_points) in STRUCTURE_PARTS.items():
                idx = np.flatnonzero(structure[:n_prompts] == s)
                if not len(idx):
                    continue
                box_t = pts = None
                if has_box:
                    box_t = torch.as_tensor(sam_boxes(boxes[idx], original), dtype=torch.float, device=self.device)
                if has_points:
                    coords = torch.as_tensor(sam_points(points[idx], original), dtype=torch.float, device=self.device)
                    pts = (coords, torch.as_tensor(labels[idx], dtype=torch.int, device=self.device))
                mask_input = None
                for r in range(cfg.rounds):
                    sparse, dense = sam.prompt_encoder(points=pts, boxes=box_t, masks=mask_input)
                    low, pred_iou = sam.mask_decoder(
                        image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                        multimask_output=cfg.multimask,
                    )
                    logits[r * cfg.prompts + idx] = low.float().cpu().numpy()
                    iou[r * cfg.prompts + idx] = pred_iou.float().cpu().numpy()
                    best = pred_iou.argmax(dim=1)  # the mask fed back, as SAM's interactive loop does
                    mask_input = low[torch.arange(len(idx), device=low.device), best][:, None].float()
        return logits, iou

    def write_part(self, rows: dict[str, np.ndarray], part_rel: str) -> tuple[list[FileEntry], dict[str, int]]:
        """Run the teacher on one unit's ok rows and write the part: prompts, images, logits."""
        cfg = self.cfg
        n, m = len(rows["status"]), num_masks(cfg.multimask)
        stored = np.empty((n, cfg.prompts * cfg.rounds, m, LOW_RES, LOW_RES), storage_dtype(cfg.precision))
        rows["iou"] = np.full((n, cfg.prompts * cfg.rounds, m), np.nan, np.float32)
        for i in range(n):
            n_prompts = int(rows["n_prompts"][i])
            logits, rows["iou"][i] = self.predict_image(rows["image"][i], rows["input_hw"][i], rows["original_hw"][i],
                                                        rows["structure"][i], rows["boxes"][i], rows["points"][i],
                                                        rows["labels"][i], n_prompts)
            stored[i] = encode_logits(np.nan_to_num(logits, nan=0.0), cfg.precision)
            for r in range(cfg.rounds):  # padding slots hold the fill value
                stored[i, r * cfg.prompts + n_prompts:(r + 1) * cfg.prompts] = fill_value(cfg.precision)
        source, shard = str(rows["source"][0]), str(rows["shard"][0])
        samples = [{c: rows[c][i] for c in rows if c != "image"} for i in range(n)]
        prompts = prompts_table(source, shard, samples, cfg.prompts, cfg.rounds, cfg.points_per_prompt, m)
        files = [self.storage.write_bytes(part_rel + TABLE_SUFFIX[("sam", "prompts")], parquet_bytes(prompts)),
                 self.storage.write_bytes(part_rel + TABLE_SUFFIX[("sam", "images")],
                                          parquet_bytes(images_table(source, shard, samples)))]
        files += [self.storage.write_bytes(f"{part_rel}{TABLE_SUFFIX[('sam', 'logits')]}/{key}", data)
                  for key, data in sorted(logits_group_objects(stored, cfg.precision).items())]
        return files, {"prompts": prompts.num_rows, "images": n}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return teacher_batch_output("sam", batch, self.write_part, self.storage)
