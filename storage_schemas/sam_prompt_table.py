"""Reading a SAM unit's prompts table back as arrays, one set per image (student and verify share it).

    prompts = prompts_by_image(store.read_unit_table(record, "prompts"), points_per_prompt)
    p = prompts[sample_index]     # SamPrompts: structure [P], boxes [P, 4], points [P, n, 2], ...
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage_schemas.tables import PROMPT_STRUCTURES


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
    t = table.filter(pc.equal(table.column("round"), 0)).sort_by([("sample_index", "ascending"), ("prompt", "ascending")])
    n, k = t.num_rows, points_per_prompt
    structure = pc.index_in(t.column("structure"), value_set=pa.array(PROMPT_STRUCTURES)).to_numpy().astype(np.int64)
    box = t.column("box").combine_chunks()
    boxes = np.asarray(box.values, np.float32).reshape(n, 4)  # fixed-size lists keep slots for nulls
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
    return {int(image[a]): SamPrompts(structure[a:b], boxes[a:b], points[a:b], labels[a:b], ious[a:b])
            for a, b in zip(starts, ends)}
