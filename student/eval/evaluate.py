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

import torch

from storage_schemas.pixels.labelled_images import SegmentationSet, labelled_images
from storage_schemas.plumbing.errors import ConfigError, run_cli
from student.eval.inference import SamClipPredictor
from student.eval.options import add_class_name_arguments, check_refine_arguments, class_names
from student.eval.tasks import sam_agreement, semantic_segmentation, zeroshot_classification
from student.modeling.load import export_meta

TASKS = ("zeroshot-cls", "semseg", "sam-agreement")


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
            refine=args.refine,
            threshold=args.threshold,
            points=args.points,
            seed=args.seed,
        )
        name = "semseg-refine" if args.refine else "semseg"
    else:
        if not store_url:
            raise ConfigError("sam-agreement needs --store (the export names none)")
        held_out = args.held_out if args.held_out is not None else meta.get("held_out")
        if held_out is None:
            raise ConfigError("sam-agreement needs --held-out (the export does not record the training split)")
        result = sam_agreement(predictor, store_url, held_out=float(held_out), images=args.images, seed=args.seed)
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
