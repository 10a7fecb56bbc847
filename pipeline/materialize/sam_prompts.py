"""Prompts for the SAM teacher, drawn from an image's SA-1B annotations with a seeded RNG.

Per image: P annotations (without replacement; fewer if fewer are usable), each turned into a box
(the annotation's bbox, optionally jittered as in SAM training), points sampled inside its mask,
or both, by the configured mix. Annotations that cannot give a prompt (empty mask, zero-size box,
malformed RLE, a mask of another size than the image) are counted per reason, not sample errors.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.config import SamConfig
from storage_schemas.plumbing.sample_errors import SampleError
from storage_schemas.store.tables import PROMPT_STRUCTURES, STRUCTURE_PARTS


@dataclass
class Prompt:
    annotation_id: int
    structure: str  # one of PROMPT_STRUCTURES
    box: np.ndarray | None  # float32 [4], [x0, y0, x1, y1] in original pixels
    points: np.ndarray  # float32 [n, 2], (x, y) in original pixels; n = 0 for a box alone
    labels: np.ndarray  # int8 [n], 1 = foreground


class AnnotationError(SampleError):
    """An SA-1B sample whose annotation JSON is unreadable or gives no usable prompt."""


def parse_sa1b_json(data: bytes) -> tuple[dict, list[dict]]:
    """(image info, annotations) of an SA-1B JSON, or AnnotationError('bad_json')."""
    try:
        doc = json.loads(data)
        info, anns = doc["image"], doc["annotations"]
        int(info["width"]), int(info["height"])
        if not isinstance(anns, list):
            raise TypeError("annotations is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise AnnotationError("bad_json", f"{type(e).__name__}: {e}") from None
    return info, anns


def usable_annotations(anns: list[dict], height: int, width: int) -> tuple[list[tuple[dict, dict]], Counter]:
    """[(annotation, rle)] that can give a prompt, and the skipped count per reason."""
    usable, skipped = [], Counter()
    for ann in anns:
        try:
            seg = ann["segmentation"]
            rle = {"size": [int(v) for v in seg["size"]], "counts": seg["counts"].encode()}
            area = int(mask_utils.area(rle))
            x, y, w, h = (float(v) for v in ann["bbox"])
            int(ann["id"])
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped["malformed"] += 1
            continue
        if rle["size"] != [height, width]:
            skipped["size_mismatch"] += 1
        elif area == 0:
            skipped["empty_mask"] += 1
        elif w <= 0 or h <= 0:
            skipped["zero_size_box"] += 1
        else:
            usable.append((ann, rle))
    return usable, skipped


def jitter_box(rng: np.random.Generator, box: np.ndarray, noise: float, height: int, width: int) -> np.ndarray:
    """Each coordinate moved by N(0, noise x box side), kept inside the image and non-empty."""
    if noise <= 0:
        return box
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    out = box + rng.normal(0.0, noise, 4) * side
    out = np.clip(out, 0, [width, height, width, height])
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        return box
    return out.astype(np.float32)


def sample_points(rng: np.random.Generator, rle: dict, n: int) -> np.ndarray:
    """n pixel centres drawn uniformly inside the annotation's mask: float32 [n, 2] (x, y)."""
    mask = mask_utils.decode(rle)
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(xs), n)
    return np.stack([xs[pick] + 0.5, ys[pick] + 0.5], axis=1).astype(np.float32)


def sample_prompts(
    rng: np.random.Generator, usable: list[tuple[dict, dict]], cfg: SamConfig, height: int, width: int
) -> list[Prompt]:
    mix = np.array([cfg.mix.box, cfg.mix.points, cfg.mix.box_points], dtype=np.float64)
    chosen = rng.permutation(len(usable))[: cfg.prompts]
    structures = rng.choice(3, size=len(chosen), p=mix / mix.sum())
    prompts = []
    for idx, s in zip(chosen, structures):
        ann, rle = usable[idx]
        x, y, w, h = (float(v) for v in ann["bbox"])
        has_box, has_points = STRUCTURE_PARTS[int(s)]
        box = None
        if has_box:
            box = jitter_box(rng, np.array([x, y, x + w, y + h], np.float32), cfg.box_jitter, height, width)
        n = cfg.points_per_prompt if has_points else 0
        points = sample_points(rng, rle, n) if n else np.zeros((0, 2), np.float32)
        prompts.append(Prompt(int(ann["id"]), PROMPT_STRUCTURES[s], box, points, np.ones(n, np.int8)))
    return prompts
