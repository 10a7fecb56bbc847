"""`python -m student.evaluate TASK --export DIR [options]`: the student's zero-shot tasks.

    zeroshot-cls   top-1/top-5 on a labelled set (class folders, or webdataset shards with a class
                   field), centre crop at --size (224 or 336) px
    semseg         zero-shot semantic segmentation on a Pascal-VOC-style set: 448 x 448 input,
                   per-patch CLIP-head features against the class embeddings, logits upsampled
                   bilinearly to the image, mIoU (ignore label 255)
    semseg --refine  appendix B: one backbone pass at 1024 px, the CLIP head's class probabilities
                   as mask prompts plus points where they exceed --threshold, the SAM head decides
    sam-agreement  mask IoU (and logit correlation) of the student's SAM head against the cached
                   teacher masks for the stored prompts of held-out images

Class-name embeddings come from the store's text table (--text NAME; the store defaults to the one
the student trained on) or from an open_clip text tower (--text-tower ARCH --text-pretrained FILE,
cached under --text-cache). Each task writes OUT/TASK.json and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from storage_schemas.pixels.labelled_images import SegmentationSet, labelled_images
from storage_schemas.plumbing.errors import ConfigError, StoreError, run_cli
from storage_schemas.store import open_store
from student.data import split_filter
from student.export import STUDENT_META
from student.inference import SamClipPredictor
from student.metrics import IGNORE_LABEL, confusion_matrix, iou_per_class, mean_iou, topk_correct
from student.validation import load_sam_held_out, sam_metrics
from student.zero_shot import ClassNames, StoreText, TextTower

TASKS = ("zeroshot-cls", "semseg", "sam-agreement")


def add_class_name_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help="target store URL (default: the one the student trained on)")
    parser.add_argument("--text", help="text table of the store holding the class-name embeddings")
    parser.add_argument("--text-tower", help="open_clip architecture whose text tower embeds the class names")
    parser.add_argument("--text-pretrained", help="checkpoint of --text-tower")
    parser.add_argument("--text-cache", default="~/.cache/samclip/text", help="where tower embeddings are cached")
    parser.add_argument("--templates", choices=("openai", "simple"), help="--text-tower only (default: openai)")


def export_meta(export_dir: str) -> dict[str, Any]:
    """The export's description (student.json), or {} for a folder without one (load_student says why)."""
    path = os.path.join(export_dir, STUDENT_META)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def class_names(args: argparse.Namespace, names: list[str], store_url: str | None, meta: dict[str, Any]) -> ClassNames:
    """The class embeddings the arguments of `add_class_name_arguments` name, checked to come from
    the text tower of the CLIP teacher the student was distilled from (where both are known)."""
    if args.text_tower:
        if not args.text_pretrained:
            raise ConfigError("--text-tower needs --text-pretrained (the tower's checkpoint)")
        classes = TextTower(args.text_tower, args.text_pretrained, args.templates or "openai", args.text_cache)(names)
    else:
        if not args.text:
            raise ConfigError("class embeddings: give --text NAME (a text table of the store) or --text-tower")
        if args.templates:
            raise ConfigError("--templates applies to --text-tower; a text table was built with its own templates")
        if not store_url:
            raise ConfigError("--text needs a store: give --store (the export names none)")
        classes = StoreText(open_store(store_url), args.text)(names)
    teacher = meta.get("clip_teacher", {}).get("weights_sha256")
    if teacher and classes.teacher_weights_sha256 and teacher != classes.teacher_weights_sha256:
        raise ConfigError(
            f"the class embeddings come from CLIP weights {classes.teacher_weights_sha256[:12]}..., "
            f"the student was distilled from {teacher[:12]}...; use that teacher's text tower"
        )
    return classes


def zeroshot_classification(
    predictor: SamClipPredictor, classes: ClassNames, samples, size: int, batch_size: int = 32
) -> dict[str, Any]:
    """samples: (key, image, label) -> top-1/top-5 over them, and top-1 per class."""
    hits, n = {1: 0, 5: 0}, 0
    per_class = np.zeros((len(classes.names), 2), np.int64)  # [correct, seen]

    def flush(images, labels):
        nonlocal n
        logits = classes.logits(predictor.embed_images(images, size))
        target = torch.tensor(labels)
        for k, v in topk_correct(logits, target).items():
            hits[k] += v
        top1 = logits.argmax(dim=1) == target
        np.add.at(per_class, (np.asarray(labels), 0), top1.numpy().astype(np.int64))
        np.add.at(per_class, (np.asarray(labels), 1), 1)
        n += len(labels)

    images, labels = [], []
    for _, image, label in tqdm(samples, desc="zeroshot-cls", unit="img"):
        if not 0 <= label < len(classes.names):
            raise ConfigError(f"label {label} is not one of the {len(classes.names)} classes")
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            flush(images, labels)
            images, labels = [], []
    if images:
        flush(images, labels)
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
    dataset: SegmentationSet,
    refine: bool,
    threshold: float,
    points: int,
    seed: int,
) -> dict[str, Any]:
    """seed: the refinement's point draws use seed + the image's position in the set."""
    c = len(classes.names)
    conf, coarse_conf = np.zeros((c, c), np.int64), np.zeros((c, c), np.int64)
    images = 0
    for i, (key, image, label) in enumerate(tqdm(dataset, desc="semseg" + (" --refine" if refine else ""), unit="img")):
        if label[label != IGNORE_LABEL].max(initial=0) >= c:
            raise ConfigError(
                f"{key}: label value {int(label[label != IGNORE_LABEL].max())} but only {c} class names "
                f"({dataset.root}/classes.txt or --classes)"
            )
        seg = predictor.segment(image, classes, refine=refine, threshold=threshold, max_points=points, seed=seed + i)
        conf += confusion_matrix(seg.labels, label, c)
        coarse_conf += confusion_matrix(seg.coarse_labels, label, c)
        images += 1
    if images == 0:
        raise ConfigError("the segmentation set has no usable images")
    iou = iou_per_class(conf)
    out = {
        "miou": mean_iou(conf),
        "images": images,
        "resolution": 1024 if refine else 448,
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(classes.names, iou)},
        "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
    }
    if refine:
        out.update({"miou_clip_head_only": mean_iou(coarse_conf), "threshold": threshold, "max_points": points})
    return out


def sam_agreement(
    predictor: SamClipPredictor, store_url: str, held_out: float, images: int, seed: int
) -> dict[str, Any]:
    store = open_store(store_url)
    manifest = store.manifest("sam")
    if manifest is None:
        raise StoreError(f"store {store.url} has no SAM targets (no sam/_manifest.json)")
    multimask = int(manifest.must_match["policy"]["num_masks"]) == 3
    held = load_sam_held_out(
        store, store.commits("sam"), split_filter(held_out, "held_out"), images, prompts=1 << 30, seed=seed
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


def check_refine_arguments(threshold: float, points: int) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--threshold: expected a class probability in [0, 1), got {threshold}")
    if points < 1:
        raise ConfigError(f"--points: expected at least 1 point per class, got {points}")


def print_table(task: str, result: dict[str, Any]) -> None:
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max(len(k) for k, _ in rows)
    print(f"{task}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m student.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=TASKS)
    parser.add_argument(
        "--export", required=True, help="the student's export folder (student.safetensors + student.json)"
    )
    parser.add_argument("--data", help="zeroshot-cls: class folders or .tar shards; semseg: a VOC-style root")
    parser.add_argument(
        "--classes", help="class names, one per line (default: folder names / the set's classes.txt / VOC's)"
    )
    parser.add_argument("--class-field", default="cls", help="webdataset member holding the integer label")
    parser.add_argument("--split", default="val", help="semseg: ImageSets/Segmentation/SPLIT.txt")
    parser.add_argument("--size", type=int, default=224, help="zeroshot-cls input size (paper: 336)")
    parser.add_argument("--refine", action="store_true", help="semseg: CLIP head then SAM head at 1024 px")
    parser.add_argument("--threshold", type=float, default=0.5, help="--refine: class probability for point prompts")
    parser.add_argument("--points", type=int, default=3, help="--refine: points per class, at most")
    add_class_name_arguments(parser)
    parser.add_argument("--held-out", type=float, help="sam-agreement: held-out fraction (default: the training run's)")
    parser.add_argument("--images", type=int, default=64, help="sam-agreement: held-out images, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="out/eval", help="folder for TASK.json")
    args = parser.parse_args(argv)

    meta = export_meta(args.export)
    predictor = SamClipPredictor.load(args.export, args.device)
    store_url = args.store or meta.get("store")
    start = time.time()
    skipped: list[dict] = []
    name = args.task
    if args.task in ("zeroshot-cls", "semseg") and not args.data:
        raise ConfigError(f"{args.task} needs --data")
    if args.task == "zeroshot-cls":
        names, samples = labelled_images(args.data, skipped, args.classes, args.class_field)
        result = zeroshot_classification(predictor, class_names(args, names, store_url, meta), samples, args.size)
    elif args.task == "semseg":
        dataset = SegmentationSet(args.data, skipped, args.split, args.classes)
        check_refine_arguments(args.threshold, args.points)
        result = semantic_segmentation(
            predictor,
            class_names(args, dataset.classnames, store_url, meta),
            dataset,
            args.refine,
            args.threshold,
            args.points,
            args.seed,
        )
        name = "semseg-refine" if args.refine else "semseg"
    else:
        if not store_url:
            raise ConfigError("sam-agreement needs --store (the export names none)")
        held_out = args.held_out if args.held_out is not None else meta.get("held_out")
        if held_out is None:
            raise ConfigError("sam-agreement needs --held-out (the export does not record the training split)")
        result = sam_agreement(predictor, store_url, float(held_out), args.images, args.seed)
    result = {**result, "skipped_images": len(skipped), "seconds": round(time.time() - start, 1)}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "task": name,
                "export": args.export,
                "data": args.data,
                "store": store_url,
                "subset": meta.get("subset"),
                "metrics": result,
                "skipped": skipped,
            },
            f,
            indent=2,
        )
    print_table(name, result)
    if meta.get("subset"):
        s = meta["subset"]
        print(f"  trained on subset '{s['name']}': {s['views']} views of {s['samples']} samples")
    for s in skipped[:5]:
        print(f"  skipped {s['key']}: {s['reason']} ({s['detail']})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
