"""The student's zero-shot evaluations, each from a predictor to a dict of metrics.

    result = zeroshot_classification(predictor, classes, samples, size=224)      # top-1, top-5, per class
    result = semantic_segmentation(predictor, classes, ds.samples(), refine=True)  # mIoU (ignore 255)
    result = sam_agreement(predictor, store_url, held_out=0.01, images=64)     # vs the cached teacher

`python -m student.evaluate` runs them from the command line and writes OUT/TASK.json.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from storage_schemas.datasets.class_names import BACKGROUND
from storage_schemas.plumbing.errors import ConfigError, StoreError
from storage_schemas.store import open_store
from student.data.unit_samples import split_filter
from student.eval.inference import SEMSEG_SIZE, SamClipPredictor, Segmentation
from student.eval.zero_shot import ClassNames
from student.metrics import confusion_matrix, iou_per_class, mean_iou, topk_correct
from student.validation import load_sam_held_out, sam_metrics


def batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def zeroshot_classification(
    predictor: SamClipPredictor, classes: ClassNames, samples, size: int, batch_size: int = 32
) -> dict[str, Any]:
    """samples: (key, image, label) -> top-1/top-5 over them, and top-1 per class."""
    hits, n = {1: 0, 5: 0}, 0
    per_class = np.zeros((len(classes.names), 2), np.int64)  # [correct, seen]

    for batch in batched(tqdm(samples, desc="zeroshot-cls", unit="img"), batch_size):
        labels = [label for _, _, label in batch]
        bad = [label for label in labels if not 0 <= label < len(classes.names)]
        if bad:
            raise ConfigError(f"label {bad[0]} is not one of the {len(classes.names)} classes")
        logits = classes.logits(predictor.embed_images([image for _, image, _ in batch], size))
        target = torch.tensor(labels)
        for k, v in topk_correct(logits, target).items():
            hits[k] += v
        top1 = logits.argmax(dim=1) == target
        np.add.at(per_class, (np.asarray(labels), 0), top1.numpy().astype(np.int64))
        np.add.at(per_class, (np.asarray(labels), 1), 1)
        n += len(labels)
    if n == 0:
        raise ConfigError("the labelled set has no images")
    return {
        "top1": hits[1] / n,
        "top5": hits[5] / n,
        "images": n,
        "size": size,
        "per_class_top1": {c: (int(r[0]) / int(r[1]) if r[1] else None) for c, r in zip(classes.names, per_class)},
    }


def semantic_segmentation(
    predictor: SamClipPredictor,
    classes: ClassNames,
    samples: Iterable[tuple[str, Any, np.ndarray]],
    *,
    refine: bool = False,
    threshold: float = 0.5,
    points: int = 3,
    seed: int = 0,
    slide: tuple[int, int] | None = None,
    bg_threshold: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """mIoU over (key, image, label [H, W]) samples; with `refine`, the SAM head refines the CLIP
    head's classes (appendix B) from points where a class's probability exceeds `threshold`, at
    most `points` per class, drawn with seed + the image's position in the set. `slide`: the CLIP
    head by sliding window (crop, stride). `bg_threshold`: class 0 is background, predicted where
    no other class reaches that probability, instead of by its own class name."""
    c = len(classes.names)
    scored = classes
    if bg_threshold is not None:
        if classes.names[0] != BACKGROUND:
            raise ConfigError(f"--bg-threshold: the classes' first name is '{classes.names[0]}', not '{BACKGROUND}'")
        scored = ClassNames(classes.names[1:], classes.weights[1:], classes.teacher_weights_sha256)
    conf, coarse_conf = np.zeros((c, c), np.int64), np.zeros((c, c), np.int64)
    images = 0

    def segmented(batch: list) -> Iterable[tuple[Segmentation, np.ndarray]]:
        if refine or slide:  # one image at a time: each has its own size
            for i, (_, image, label) in enumerate(batch, images):
                seg = predictor.segment(
                    image,
                    scored,
                    refine=refine,
                    threshold=threshold,
                    max_points=points,
                    seed=seed + i,
                    slide=slide,
                    bg_threshold=bg_threshold,
                )
                yield seg, label
        else:  # whole images all squashed to 448 px: one backbone call for the batch
            segs = predictor.segment_batch([image for _, image, _ in batch], scored, bg_threshold)
            yield from zip(segs, (label for _, _, label in batch))

    for batch in batched(tqdm(samples, desc="semseg" + (" --refine" if refine else ""), unit="img"), batch_size):
        for seg, label in segmented(batch):
            conf += confusion_matrix(seg.labels, label, c)
            coarse_conf += confusion_matrix(seg.coarse_labels, label, c)
        images += len(batch)
    if images == 0:
        raise ConfigError("the segmentation set has no usable images")
    iou = iou_per_class(conf)
    out = {
        "miou": mean_iou(conf),
        "images": images,
        "resolution": 1024 if refine else (slide[0] if slide else SEMSEG_SIZE),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(classes.names, iou)},
        "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
        "inference": "slide" if slide else "whole",
    }
    if slide:
        out["slide"] = {"crop": slide[0], "stride": slide[1]}
    if classes.names[0] == BACKGROUND:
        out["background"] = {"threshold": bg_threshold} if bg_threshold is not None else "class name"
    if refine:
        out.update({"miou_clip_head_only": mean_iou(coarse_conf), "threshold": threshold, "max_points": points})
    return out


def sam_agreement(
    predictor: SamClipPredictor, store_url: str, *, held_out: float, images: int, seed: int = 0
) -> dict[str, Any]:
    """The SAM head against the cached teacher masks of at most `images` held-out images."""
    store = open_store(store_url)
    manifest = store.manifest("sam")
    if manifest is None:
        raise StoreError(f"store {store.url} has no SAM targets (no sam/_manifest.json)")
    multimask = int(manifest.must_match["policy"]["num_masks"]) == 3
    held = load_sam_held_out(
        store, store.commits("sam"), split_filter(held_out, "held_out"), limit=images, prompts=1 << 30, seed=seed
    )  # every stored prompt
    if not held:
        raise StoreError(f"store {store.url}: no held-out SAM image at held-out fraction {held_out}")
    metrics = sam_metrics(predictor.model, held, multimask, predictor.device)
    # Per mask, in the stored 256 x 256 low-res frame (padding included), not a semantic mIoU.
    return {
        "mask_iou": metrics["mask_iou"],
        "logit_corr": metrics["logit_corr"],
        "soft_iou": metrics["soft_iou"],
        "images": len(held),
        "masks": sum(b["stored_logits"].shape[0] * b["stored_logits"].shape[1] for b in held),
        "held_out": held_out,
    }
