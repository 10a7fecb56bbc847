"""`python -m student.inspect_store ROOT [--samples N] [--prompts P] --out DIR`: look at cached targets.

    clip_<source>_<key>.png   the image with its K stored crop boxes (view index, f = flipped) and
                              each view rendered from its (crop, flip) at the teacher's size
    sam_<source>_<key>.png    one tile per stored prompt: the teacher's mask (logit > 0, i.e.
                              probability > 0.5, upsampled as SamPredictor does; outline and
                              translucent fill) over the image, with the prompt's box and points,
                              titled with the teacher's predicted IoU (its IoU head's
                              estimate); a legend and that note below

The first N committed samples of each kind are drawn; the pixels are re-rendered from the input
shards by the same code the teacher and the student use.
"""

from __future__ import annotations

import argparse
import os
from itertools import islice

import torch
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

from storage_schemas.pixels.decode import decode_image
from storage_schemas.pixels.sam_transforms import IMAGE_SIZE
from storage_schemas.pixels.views import render_view
from storage_schemas.plumbing.errors import StoreError, run_cli
from storage_schemas.store import TargetStore, open_store
from storage_schemas.store.tables import PROMPT_STRUCTURES, STRUCTURE_PARTS
from student.data.unit_samples import iter_clip_unit, iter_sam_unit
from student.eval.inference import postprocess_masks
from student.eval.pictures import (
    BACKGROUND_POINT,
    BOX_COLOR,
    FOREGROUND_POINT,
    MASK_COLOR,
    draw_crops,
    draw_prompt,
    fit_height,
    mask_overlay,
    sheet,
)


def clip_sheet(sample, size: int) -> Image.Image:
    image = sample.image(size)
    boxes, _ = fit_height(image)
    draw_crops(boxes, sample.crops, sample.flips)
    views = [
        (
            f"view {v}{' (flip)' if sample.flips[v] else ''}",
            Image.fromarray(render_view(image, sample.crops[v], bool(sample.flips[v]), size)),
        )
        for v in range(len(sample.crops))
    ]
    return sheet([(f"{sample.identity.key}: {len(views)} crops", boxes), *views])


SAM_NOTE = (
    "pred. IoU: the teacher's own estimate of its mask's quality (SAM's IoU head), not a measured IoU;"
    " a random-initialised teacher's can be negative"
)
SAM_LEGEND = [
    ("teacher mask, p > 0.5", MASK_COLOR),
    ("box prompt", BOX_COLOR),
    ("point (foreground)", FOREGROUND_POINT),
    ("point (background)", BACKGROUND_POINT),
]


def sam_sheet(sample, prompts: int) -> Image.Image:
    image = decode_image(sample.data, sample.max_pixels).image  # decoded once: SAM's input size follows from its size
    input_hw = ResizeLongestSide.get_preprocess_shape(image.height, image.width, IMAGE_SIZE)
    logits = torch.from_numpy(sample.logits()[:prompts])  # [p, M, 256, 256]
    masks = postprocess_masks(logits, input_hw, (image.height, image.width)) > 0
    p = sample.prompts
    tiles = []
    for i in range(len(logits)):
        m = int(p.iou[i].argmax())  # the mask SamPredictor would rank first
        tile, scale = fit_height(mask_overlay(image, masks[i, m].numpy()))
        has_box, has_points = STRUCTURE_PARTS[int(p.structure[i])]
        draw_prompt(
            tile,
            box=p.boxes[i] if has_box else None,
            points=p.points[i] if has_points else None,
            labels=p.labels[i] if has_points else None,
            scale=scale,
        )
        tiles.append((f"{i}: {PROMPT_STRUCTURES[int(p.structure[i])]}, pred. IoU {p.iou[i, m]:.2f}", tile))
    return sheet(tiles, SAM_LEGEND, note=SAM_NOTE)


def inspect(store: TargetStore, out: str, samples: int, prompts: int, size: int | None = None) -> list[str]:
    """Draw the first `samples` samples of each kind into `out`; returns the PNG paths.
    size: CLIP view size (default: the teacher's, from the store's manifest)."""
    written = []
    manifest = store.manifest("clip")
    if size is None and manifest is not None:
        size = int(manifest.must_match["teacher"]["preprocess"]["size"][0])
    os.makedirs(out, exist_ok=True)
    clip = (
        s
        for r in store.commits("clip")
        for s in iter_clip_unit(store, r, storage_options=store.storage.storage_options)
    )
    for s in islice(clip, samples):
        path = os.path.join(out, f"clip_{s.identity.source}_{s.identity.key}.png")
        clip_sheet(s, size).save(path)
        written.append(path)
    sam = (
        s for r in store.commits("sam") for s in iter_sam_unit(store, r, storage_options=store.storage.storage_options)
    )
    for s in islice(sam, samples):
        path = os.path.join(out, f"sam_{s.identity.source}_{s.identity.key}.png")
        sam_sheet(s, prompts).save(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m student.inspect_store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="the target store's URL")
    parser.add_argument("--samples", type=int, default=3, help="samples of each kind")
    parser.add_argument("--prompts", type=int, default=6, help="prompts drawn per SAM image")
    parser.add_argument("--size", type=int, help="CLIP view size (default: the teacher's)")
    parser.add_argument("--out", default="out/pictures/store")
    args = parser.parse_args(argv)
    store = open_store(args.root)
    written = inspect(store, args.out, args.samples, args.prompts, args.size)
    if not written:
        raise StoreError(f"store {store.url} has no committed units to draw")
    print(f"wrote {len(written)} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
