"""`python -m student.evaluate TASK --export DIR [options]`: the student's zero-shot tasks.

    zeroshot-cls   top-1/top-5 on a labelled set, centre crop at --size (224 or 336) px;
                   --dataset imagefolder (class folders, the default), imagenet, imagenet-v2,
                   places365 or wds (shards with a class member, the default for .tar)
    semseg         zero-shot semantic segmentation: the image squashed to 448 x 448 (or --slide
                   CROP STRIDE windows), per-patch CLIP-head features against the class
                   embeddings, logits upsampled bilinearly to the image, mIoU (ignore label 255);
                   --dataset voc (the default), context59, ade20k, coco-stuff or coco-object
    semseg --refine  appendix B: one backbone pass at 1024 px, the CLIP head's class probabilities
                   as mask prompts plus points where they exceed --threshold, the SAM head decides
    sam-agreement  mask IoU (and logit correlation) of the student's SAM head against the cached
                   teacher masks for the stored prompts of held-out images
    suite          a list of benchmarks (--suite FILE.yaml), the student's heads and the teacher
                   (--job) in one table (student/eval/suite.py)

Class-name embeddings come from the store's text table (--text NAME; by default the table named
after the dataset, which `python -m pipeline.text_targets JOB --classes DATASET` writes) or from an
open_clip text tower (--text-tower ARCH --text-pretrained FILE, cached under --text-cache). Images
decode on --workers threads ahead of the model; --limit N scores the first N. Each task writes
OUT/TASK.json and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from storage_schemas.datasets import CLASSIFICATION, SEGMENTATION, TEXT_TABLES, classification_set, segmentation_set
from storage_schemas.datasets.class_names import benchmark_classes
from storage_schemas.plumbing.errors import ConfigError, run_cli
from student.eval.inference import SamClipPredictor
from student.eval.options import add_class_name_arguments, check_refine_arguments, class_names
from student.eval.suite import suite_main
from student.eval.tasks import sam_agreement, semantic_segmentation, zeroshot_classification
from student.eval.teacher import NOT_APPLICABLE, ClipTeacherPredictor
from student.eval.teacher import TASKS as TEACHER_TASKS
from student.modeling.load import export_meta

TASKS = ("zeroshot-cls", "semseg", "sam-agreement")


def print_table(task: str, result: dict[str, Any]) -> None:
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max(len(k) for k, _ in rows)
    print(f"{task}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["suite"]:
        return suite_main(argv[1:], main)
    parser = argparse.ArgumentParser(
        prog="python -m student.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task", choices=(*TASKS, "suite"), help="a task, or suite (see student/eval/suite.py)")
    parser.add_argument("--export", help="the student's export folder (student.safetensors + student.json)")
    parser.add_argument(
        "--model",
        choices=("student", "teacher"),
        default="student",
        help="teacher: the store's CLIP teacher (from --job) on the same data, table and metrics",
    )
    parser.add_argument("--job", help="--model teacher: the job config that made the store (its clip.teacher)")
    parser.add_argument("--data", help="the dataset's root (or .tar shards for wds)")
    parser.add_argument(
        "--dataset",
        choices=(*CLASSIFICATION, *SEGMENTATION),
        help="the data's layout (default: imagefolder, or wds for .tar, for zeroshot-cls; voc for semseg)",
    )
    parser.add_argument(
        "--classes",
        help="class names, one per line, or a benchmark's list, naming the set's labels in their order "
        "(default: the dataset's own)",
    )
    parser.add_argument("--class-field", default="cls", help="wds: the member holding the integer label")
    parser.add_argument("--split", help="semseg: the split (voc, context59: val; ade20k: validation; coco: val2017)")
    parser.add_argument("--size", type=int, default=224, help="zeroshot-cls input size (paper: 336)")
    parser.add_argument("--slide", type=int, nargs=2, metavar=("CROP", "STRIDE"), help="semseg: sliding window")
    parser.add_argument(
        "--bg-threshold", type=float, help="semseg on voc/coco-object: background where no class reaches it"
    )
    parser.add_argument("--refine", action="store_true", help="semseg: CLIP head then SAM head at 1024 px")
    parser.add_argument("--threshold", type=float, default=0.5, help="--refine: class probability for point prompts")
    parser.add_argument("--points", type=int, default=3, help="--refine: points per class, at most")
    add_class_name_arguments(parser)
    parser.add_argument("--held-out", type=float, help="sam-agreement: held-out fraction (default: the training run's)")
    parser.add_argument("--images", type=int, default=64, help="sam-agreement: held-out images, at most")
    parser.add_argument("--limit", type=int, help="score the first N images of the set")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images ahead of the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="out/eval", help="folder for TASK.json")
    args = parser.parse_args(argv)
    check_dataset_arguments(args)

    if args.model == "teacher":
        if not args.job:
            raise ConfigError("--model teacher needs --job JOB.yaml (the job config whose CLIP teacher made the store)")
        if args.task not in TEACHER_TASKS:
            return write_result(args, args.task, {"not_applicable": NOT_APPLICABLE}, [], None, {})
        predictor, job_store = ClipTeacherPredictor.from_job(args.job, args.device)
        meta, store_url, size = predictor.meta, args.store or job_store, predictor.size
    else:
        if not args.export:
            raise ConfigError("--export DIR is needed (the student's export folder), or --model teacher --job JOB.yaml")
        meta = export_meta(args.export)
        predictor = SamClipPredictor.load(args.export, args.device)
        store_url, size = args.store or meta.get("store"), args.size
    start = time.time()
    skipped: list[dict] = []
    name = args.task
    if args.task == "zeroshot-cls":
        ds = classification_set(args.dataset, args.data, skipped, classes=args.classes, class_field=args.class_field)
        classes = class_names(args, ds.classnames, store_url, meta, benchmark_table(args.dataset, ds.classnames))
        result = zeroshot_classification(predictor, classes, ds.samples(args.workers, args.limit), size)
    elif args.task == "semseg":
        ds = segmentation_set(args.dataset, args.data, skipped, split=args.split, classes=args.classes)
        if args.bg_threshold is not None and not ds.has_background:
            raise ConfigError(f"--bg-threshold: dataset {args.dataset}'s classes have no 'background' first")
        classes = class_names(args, ds.classnames, store_url, meta, benchmark_table(args.dataset, ds.classnames))
        result = semantic_segmentation(
            predictor,
            classes,
            ds.samples(args.workers, args.limit),
            refine=args.refine,
            threshold=args.threshold,
            points=args.points,
            seed=args.seed,
            slide=tuple(args.slide) if args.slide else None,
            bg_threshold=args.bg_threshold,
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
    return write_result(args, name, result, skipped, store_url, meta)


def write_result(
    args: argparse.Namespace, name: str, result: dict[str, Any], skipped: list[dict], store_url, meta: dict
) -> int:
    """OUT/TASK.json (OUT/TASK-teacher.json for the teacher), and its table printed."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{name}-teacher.json" if args.model == "teacher" else f"{name}.json")
    data = {} if args.task == "sam-agreement" else {"dataset": args.dataset, "limit": args.limit}
    with open(path, "w") as f:
        json.dump(
            {
                "task": name,
                "model": args.model,
                "export": args.export,
                "job": args.job,
                "data": args.data,
                **data,
                "store": store_url,
                "subset": meta.get("subset"),
                "metrics": result,
                "skipped": skipped,
            },
            f,
            indent=2,
        )
    if "not_applicable" in result:
        print(f"{name}: not applicable to the {args.model} ({result['not_applicable']})")
    else:
        print_table(name if args.model == "student" else f"{name} (teacher)", result)
    if meta.get("subset"):
        s = meta["subset"]
        print(f"  trained on subset '{s['name']}': {s['views']} views of {s['samples']} samples")
    for s in skipped[:5]:
        print(f"  skipped {s['key']}: {s['reason']} ({s['detail']})")
    print(f"wrote {path}")
    return 0


def benchmark_table(dataset: str, names: list[str]) -> str | None:
    """The text table named after the dataset's benchmark, where the set is scored with that
    benchmark's class names (not a set of one's own in its layout)."""
    table = TEXT_TABLES.get(dataset)
    return table if table and names == list(benchmark_classes(table)) else None


def check_dataset_arguments(args: argparse.Namespace) -> None:
    """Fills in the task's default dataset; one line for an option the task or dataset cannot take."""
    if args.task == "sam-agreement":
        return
    if not args.data:
        raise ConfigError(f"{args.task} needs --data")
    if args.dataset is None:
        args.dataset = (
            ("wds" if args.data.endswith(".tar") else "imagefolder") if args.task == "zeroshot-cls" else "voc"
        )
    wanted = CLASSIFICATION if args.task == "zeroshot-cls" else SEGMENTATION
    if args.dataset not in wanted:
        raise ConfigError(f"--dataset {args.dataset} is not a {args.task} set (expected one of {', '.join(wanted)})")
    if args.task == "semseg":
        check_refine_arguments(args.threshold, args.points)
        if args.refine and (args.slide or args.bg_threshold is not None):
            raise ConfigError("--refine takes neither --slide nor --bg-threshold (the SAM head decides every pixel)")
        if args.slide and not (0 < args.slide[1] <= args.slide[0]):
            raise ConfigError(f"--slide CROP STRIDE: expected 0 < STRIDE <= CROP, got {args.slide[0]} {args.slide[1]}")
        if args.bg_threshold is not None and not 0.0 < args.bg_threshold < 1.0:
            raise ConfigError(f"--bg-threshold: expected a probability in (0, 1), got {args.bg_threshold}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit: expected at least 1 image, got {args.limit}")


if __name__ == "__main__":
    run_cli(main)
