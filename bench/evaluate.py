"""Evaluation throughput: `student.evaluate`'s classification and segmentation against the bare
forward of the same model on the same batches.

    python bench/evaluate.py [--archs tiny vit_b] [--images 64] [--workers 4] [--device cpu]

For each student (a randomly initialised SAM backbone of --archs with the CLIP head: the speed
does not depend on the weights) and each task, side by side in one process:
- eval:  images/s of the evaluation as the command runs it: JPEGs read from a class-folder set
         (classification, 224 px centre crop, batches of 32) or a VOC-layout set (segmentation,
         448 px, batches of 8, mIoU over 640 x 480 label maps), decoded on --workers threads
         ahead of the model, scored against 20 class embeddings;
- bare:  images/s of the model alone on the same batch sizes, inputs already in memory;
- ratio: bare / eval, the evaluation's overhead (target: within 1.3).
The images are scikit-image's photographs at 640 x 480, written as JPEGs to a scratch folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import skimage.data
import torch
from PIL import Image

from storage_schemas.datasets import classification_set, segmentation_set
from storage_schemas.models.sam_models import build_sam
from student.eval.inference import SEMSEG_SIZE, SamClipPredictor
from student.eval.tasks import semantic_segmentation, zeroshot_classification
from student.eval.zero_shot import ClassNames
from student.modeling.model import SamClip

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
CLASSES = 20


def write_sets(root: str, n: int) -> tuple[str, str]:
    """A class-folder set and a VOC-layout set of n 640 x 480 JPEGs each."""
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(getattr(skimage.data, p)()).convert("RGB").resize((640, 480)) for p in PHOTOS]
    cls, voc = os.path.join(root, "classify"), os.path.join(root, "voc")
    for sub in ("JPEGImages", "SegmentationClass"):
        os.makedirs(os.path.join(voc, sub))
    for i in range(n):
        folder = os.path.join(cls, f"class{i % CLASSES:02d}")
        os.makedirs(folder, exist_ok=True)
        photos[i % len(photos)].save(os.path.join(folder, f"{i}.jpg"), quality=90)
        photos[i % len(photos)].save(os.path.join(voc, "JPEGImages", f"{i:05d}.jpg"), quality=90)
        label = rng.integers(0, CLASSES, (480 // 40, 640 // 40), dtype=np.uint8).repeat(40, 0).repeat(40, 1)
        Image.fromarray(label, mode="L").save(os.path.join(voc, "SegmentationClass", f"{i:05d}.png"))
    with open(os.path.join(voc, "classes.txt"), "w") as f:
        f.write("".join(f"class {c}\n" for c in range(CLASSES)))
    return cls, voc


def rate(fn, images: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    return images / (time.perf_counter() - t0)


@torch.no_grad()
def bare(model: SamClip, size: int, batch: int, n: int, dense: bool, device: str):
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)

    def run():
        for _ in range(0, n, batch):
            pixels = model.normalize(x)
            (model.clip_dense if dense else model.clip_embed)(pixels)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["tiny", "vit_b"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        cls_root, voc_root = write_sets(root, args.images)
        print(f"{args.images} images of 640 x 480, {CLASSES} classes, {args.workers} decode threads, {args.device}")
        print(f"{'student':<8} {'task':<8} {'eval img/s':>11} {'bare img/s':>11} {'bare/eval':>10}")
        for arch in args.archs:
            model = SamClip(build_sam(arch), embed_dim=512).eval()
            predictor = SamClipPredictor(model, args.device)
            classes = ClassNames(
                [f"class {c}" for c in range(CLASSES)],
                torch.nn.functional.normalize(torch.randn(CLASSES, 512), dim=-1),
            )

            def classify():
                ds = classification_set("imagefolder", cls_root)
                zeroshot_classification(predictor, classes, ds.samples(args.workers), 224)

            def segment():
                ds = segmentation_set("voc", voc_root)
                semantic_segmentation(predictor, classes, ds.samples(args.workers))

            runs = (
                ("cls", classify, bare(predictor.model, 224, 32, args.images, False, args.device)),
                ("semseg", segment, bare(predictor.model, SEMSEG_SIZE, 8, args.images, True, args.device)),
            )
            for task, full, model_only in runs:
                got, ceiling = rate(full, args.images), rate(model_only, args.images)
                print(f"{arch:<8} {task:<8} {got:>11.1f} {ceiling:>11.1f} {ceiling / got:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
