"""The SAM tables: their schemas, writers and reader, in one place.

    prompts = prompts_table(source, shard, samples, P, rounds, points_per_prompt, M)   # the writers
    images = images_table(source, shard, samples)
    per_image = prompts_by_image(prompts, points_per_prompt)  # reader: SamPrompts per sample index

A part's prompts table has one row per (image, prompt, round), its images table one row per
stored image; row r of the images table is image r of the part's logits array
(storage_schemas/store/mask_logits.py). The trainer and `pipeline.verify` read prompts back as arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage_schemas.store.tables import (
    BOX,
    IDENTITY_FIELDS,
    PROMPT_STRUCTURES,
    SCHEMA_VERSION,
    STRUCTURE_PARTS,
    list_of,
)


def sam_prompts_schema(num_masks: int) -> pa.Schema:
    """One row per (image, prompt, round); `slot` is the row's index on the Zarr logits' axis 1."""
    return pa.schema(
        IDENTITY_FIELDS
        + [
            pa.field("prompt", pa.int16(), nullable=False),  # 0..n_prompts-1
            pa.field("round", pa.int8(), nullable=False),  # 0; 1 = round-0 logits fed back as a mask prompt
            pa.field("slot", pa.int16(), nullable=False),  # round * P + prompt
            pa.field("structure", pa.string(), nullable=False),  # one of PROMPT_STRUCTURES
            pa.field("annotation_id", pa.int64(), nullable=False),  # SA-1B annotation it came from
            pa.field("box", BOX, nullable=True),  # original-image pixels; null without a box
            pa.field("point_coords", list_of(list_of(pa.float32(), 2)), nullable=False),  # [[x, y]] pixels
            pa.field("point_labels", list_of(pa.int8()), nullable=False),  # 1 foreground, 0 background
            pa.field("iou", list_of(pa.float32(), num_masks), nullable=False),  # teacher's predicted IoU
        ],
        metadata={"schema_version": str(SCHEMA_VERSION), "num_masks": str(num_masks)},
    )


SKIPPED = list_of(pa.struct([("reason", pa.string()), ("count", pa.int32())]))

SAM_IMAGES_SCHEMA = pa.schema(
    IDENTITY_FIELDS
    + [
        pa.field("width", pa.int32(), nullable=False),  # original image size, pixels
        pa.field("height", pa.int32(), nullable=False),
        pa.field("n_annotations", pa.int32(), nullable=False),  # in the SA-1B JSON
        pa.field("n_prompts", pa.int16(), nullable=False),  # sampled; slots beyond hold the fill value
        pa.field("skipped_annotations", SKIPPED, nullable=False),  # why annotations gave no prompt
    ],
    metadata={"schema_version": str(SCHEMA_VERSION)},
)


def prompts_table(
    source: str, shard: str, samples: list[dict], *, prompts: int, rounds: int, points_per_prompt: int, masks: int
) -> pa.Table:
    """One row per (image, prompt, round), prompts in original-image pixels.

    samples: per image, as the SAM read stage and teacher leave them: key, sample_index,
    n_prompts, structure [P] (codes), annotation_id [P], boxes [P, 4], points [P, n, 2],
    labels [P, n], iou [P * rounds, M].
    """
    rows = []
    for s in samples:
        for r in range(rounds):
            for p in range(int(s["n_prompts"])):
                code = int(s["structure"][p])
                has_box, has_points = STRUCTURE_PARTS[code]
                n = points_per_prompt if has_points else 0
                slot = r * prompts + p
                rows.append(
                    dict(
                        source=source,
                        shard=shard,
                        key=str(s["key"]),
                        sample_index=int(s["sample_index"]),
                        prompt=p,
                        round=r,
                        slot=slot,
                        structure=PROMPT_STRUCTURES[code],
                        annotation_id=int(s["annotation_id"][p]),
                        box=s["boxes"][p].tolist() if has_box else None,
                        point_coords=s["points"][p, :n].tolist(),
                        point_labels=s["labels"][p, :n].tolist(),
                        iou=s["iou"][slot].tolist(),
                    )
                )
    return pa.Table.from_pylist(rows, schema=sam_prompts_schema(masks))


def images_table(source: str, shard: str, samples: list[dict]) -> pa.Table:
    """One row per stored image. samples: key, sample_index, original_hw (h, w), n_annotations,
    n_prompts, skipped (JSON {reason: count})."""
    return pa.Table.from_pylist(
        [
            dict(
                source=source,
                shard=shard,
                key=str(s["key"]),
                sample_index=int(s["sample_index"]),
                width=int(s["original_hw"][1]),
                height=int(s["original_hw"][0]),
                n_annotations=int(s["n_annotations"]),
                n_prompts=int(s["n_prompts"]),
                skipped_annotations=[
                    {"reason": k, "count": v} for k, v in sorted(json.loads(str(s["skipped"])).items())
                ],
            )
            for s in samples
        ],
        schema=SAM_IMAGES_SCHEMA,
    )


@dataclass
class SamPrompts:
    """An image's stored round-0 prompts, in original-image pixels."""

    structure: np.ndarray  # int64 [P], index into PROMPT_STRUCTURES
    boxes: np.ndarray  # float32 [P, 4]; zeros where the prompt has no box
    points: np.ndarray  # float32 [P, n, 2]; zeros where the prompt has no points
    labels: np.ndarray  # int64 [P, n]
    iou: np.ndarray  # float32 [P, M], the teacher's predicted IoU


def prompts_by_image(table: pa.Table, points_per_prompt: int) -> dict[int, SamPrompts]:
    """The prompts table's round-0 rows as arrays, split per image (column-wise, no per-row Python)."""
    t = table.filter(pc.equal(table.column("round"), 0)).sort_by(
        [("sample_index", "ascending"), ("prompt", "ascending")]
    )
    n, k = t.num_rows, points_per_prompt
    structure = pc.index_in(t.column("structure"), value_set=pa.array(PROMPT_STRUCTURES)).to_numpy().astype(np.int64)
    box = t.column("box").combine_chunks()
    boxes = np.array(box.values, np.float32).reshape(
        n, 4
    )  # a copy, written below; fixed-size lists keep slots for nulls
    boxes[box.is_null().to_numpy(zero_copy_only=False)] = 0.0
    # A prompt has no points (a box alone) or exactly points_per_prompt of them.
    has_points = pc.list_value_length(t.column("point_coords")).to_numpy(zero_copy_only=False) > 0
    points, labels = np.zeros((n, k, 2), np.float32), np.zeros((n, k), np.int64)
    coords = pc.list_flatten(pc.list_flatten(t.column("point_coords"))).to_numpy()
    points[has_points] = coords.reshape(-1, k, 2)
    labels[has_points] = pc.list_flatten(t.column("point_labels")).to_numpy().reshape(-1, k)
    iou = t.column("iou").combine_chunks()
    ious = np.asarray(iou.values, np.float32).reshape(n, iou.type.list_size)
    image = t.column("sample_index").to_numpy()
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    ends = np.r_[starts[1:], n]
    return {
        int(image[a]): SamPrompts(structure[a:b], boxes[a:b], points[a:b], labels[a:b], ious[a:b])
        for a, b in zip(starts, ends)
    }
