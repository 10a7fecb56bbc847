"""`python -m student.visualize --export DIR --data VOC_ROOT|IMAGES... --text NAME --out DIR`

One PNG per image: the image | its ground truth (VOC-style data) | the CLIP head's coarse
segmentation | the SAM-refined segmentation with the point prompts it was given, in Pascal VOC's
class colours with a legend of the classes shown. Both segmentations come from one backbone pass
at 1024 px (`SamClipPredictor.segment(refine=True)`).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from storage_schemas.datasets.class_names import load_classnames
from storage_schemas.datasets.folders import decode_or_skip
from storage_schemas.datasets.segmentation import voc
from storage_schemas.pixels.tar_samples import IMAGE_EXTENSIONS
from storage_schemas.plumbing.errors import ConfigError, run_cli
from student.eval.inference import SamClipPredictor
from student.eval.options import add_class_name_arguments, check_refine_arguments, class_names
from student.eval.pictures import class_colors, colorize, draw_prompt, fit_height, legend_items, overlay, sheet
from student.modeling.load import export_meta


def segmentation_sheet(
    predictor: SamClipPredictor, image, classes, *, label: np.ndarray | None, threshold: float, points: int, seed: int
) -> Image.Image:
    seg = predictor.segment(image, classes, refine=True, threshold=threshold, max_points=points, seed=seed)
    n = len(classes.names)
    tiles = [("image", image)]
    if label is not None:
        tiles.append(("ground truth", overlay(image, colorize(label, n))))
    tiles.append(("CLIP head (coarse)", overlay(image, colorize(seg.coarse_labels, n))))
    refined, scale = fit_height(overlay(image, colorize(seg.labels, n)))
    colors = class_colors(n)
    for c, pts in seg.points.items():  # each class's point prompts in its colour
        draw_prompt(refined, points=pts, scale=scale, point_color=tuple(int(v) for v in colors[c]))
    tiles.append(("SAM head (refined; dots: point prompts)", refined))
    present = [*np.unique(seg.labels), *np.unique(seg.coarse_labels), *(np.unique(label) if label is not None else [])]
    return sheet(tiles, legend_items(classes.names, present))


def images_of(paths: list[str], skipped: list[dict]):
    """(name, image) for image files or the image files of folders."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += [
                os.path.join(p, f) for f in sorted(os.listdir(p)) if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
            ]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise ConfigError(f"--data '{p}': no such file or folder")
    for f in files:
        with open(f, "rb") as fh:
            image = decode_or_skip(fh.read(), f, skipped)
        if image is not None:
            yield os.path.splitext(os.path.basename(f))[0], image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m student.visualize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export", required=True, help="the student's export folder")
    parser.add_argument("--data", nargs="+", required=True, help="a VOC-style root, or image files / folders")
    parser.add_argument("--classes", help="class names, one per line (default: the VOC-style set's)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=8, help="images, at most")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--points", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="point draws: seed + the image's position (as evaluate)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="out/pictures/semseg")
    add_class_name_arguments(parser)
    args = parser.parse_args(argv)

    skipped: list[dict] = []
    is_voc = len(args.data) == 1 and os.path.isdir(os.path.join(args.data[0], "SegmentationClass"))
    if is_voc:
        dataset = voc(args.data[0], skipped, split=args.split, classes=args.classes)
        names, items = dataset.classnames, ((k, im, lab) for k, im, lab in dataset)
    else:
        if not args.classes:
            raise ConfigError("--classes is needed for plain images (a file with one class name per line)")
        names, items = load_classnames(args.classes), ((k, im, None) for k, im in images_of(args.data, skipped))
    check_refine_arguments(args.threshold, args.points)
    predictor = SamClipPredictor.load(args.export, args.device)
    meta = export_meta(args.export)
    classes = class_names(args, names, args.store or meta.get("store"), meta)
    os.makedirs(args.out, exist_ok=True)
    written = 0
    total = min(args.limit, len(dataset)) if is_voc else None  # plain images: counted as they come
    for i, (key, image, label) in enumerate(tqdm(items, desc="pictures", unit="img", total=total)):
        if i == args.limit:
            break
        page = segmentation_sheet(
            predictor, image, classes, label=label, threshold=args.threshold, points=args.points, seed=args.seed + i
        )
        page.save(os.path.join(args.out, f"{key.replace('/', '_')}.png"))
        written += 1
    for s in skipped:
        print(f"skipped {s['key']}: {s['reason']} ({s['detail']})")
    print(f"wrote {written} pictures to {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
