"""The benchmarks' on-disk layouts, built from the sample corpus's photographs with their real file
names and folder structure, and label maps whose reading back is known exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from storage_schemas.datasets.class_names import coco_category_ids, imagenet_wnids

VOC_IDS = [f"sample_{i:03d}" for i in range(5)]  # the sample VOC set's decodable images


def photos(sample_corpus: Path) -> list[Path]:
    return sorted((sample_corpus / "eval" / "classify").glob("*/*.jpg"))


def voc_label(sample_corpus: Path, id_: str) -> np.ndarray:
    """The sample VOC set's label map: uint8 [H, W], classes 0..7, 255 on object borders."""
    with Image.open(sample_corpus / "eval" / "voc" / "SegmentationClass" / f"{id_}.png") as im:
        return np.asarray(im)


def write_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def copy_image(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def imagenet_v2(root: Path, pictures: list[Path], classes: int = 12) -> dict[str, int]:
    """Folders 0 .. classes-1, two images each (ImageNet-v2 names its files by hash); key -> label."""
    keys = {}
    for c in range(classes):
        for j in range(2):
            name = f"{c:02d}{j}d9a4c1e7f.jpeg"
            copy_image(pictures[(2 * c + j) % len(pictures)], root / str(c) / name)
            keys[f"{c}/{name}"] = c
    return keys


def imagenet_folders(root: Path, pictures: list[Path], labels: list[int]) -> dict[str, int]:
    """ROOT/WNID/ILSVRC2012_val_N.JPEG for the given labels; key -> label."""
    wnids, keys = imagenet_wnids(), {}
    for n, label in enumerate(labels, 1):
        name = f"ILSVRC2012_val_{n:08d}.JPEG"
        copy_image(pictures[n % len(pictures)], root / wnids[label] / name)
        keys[f"{wnids[label]}/{name}"] = label
    return keys


def imagenet_flat(root: Path, pictures: list[Path], labels: list[int]) -> dict[str, int]:
    """Kaggle's layout: ROOT/ILSVRC2012_val_N.JPEG, LOC_val_solution.csv three folders above
    (ILSVRC/Data/CLS-LOC/val); key -> label."""
    wnids, keys, rows = imagenet_wnids(), {}, ["ImageId,PredictionString"]
    for n, label in enumerate(labels, 1):
        stem = f"ILSVRC2012_val_{n:08d}"
        copy_image(pictures[n % len(pictures)], root / f"{stem}.JPEG")
        rows.append(f"{stem},{wnids[label]} 10 20 110 120 {wnids[label]} 5 5 50 60")
        keys[f"{stem}.JPEG"] = label
    (root.parents[2] / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return keys


def places365(root: Path, pictures: list[Path], labels: list[int], missing: int = 0) -> dict[str, int]:
    """ROOT/val_256/Places365_val_N.jpg and ROOT/filelist_places365-standard/places365_val.txt, the
    last `missing` listed images absent; key -> label of the images present."""
    lines, keys = [], {}
    for n, label in enumerate(labels, 1):
        name = f"Places365_val_{n:08d}.jpg"
        lines.append(f"{name} {label}")
        if n <= len(labels) - missing:
            copy_image(pictures[n % len(pictures)], root / "val_256" / name)
            keys[name] = label
    listing = root / "filelist_places365-standard" / "places365_val.txt"
    listing.parent.mkdir(parents=True)
    listing.write_text("\n".join(lines) + "\n")
    return keys


def shifted(label: np.ndarray) -> np.ndarray:
    """The sample's label map as a reduce_zero_label layout stores it: class k as k + 1, 0 where
    VOC ignores (reading it back gives the sample's map)."""
    return np.where(label == 255, 0, label.astype(np.int16) + 1).astype(np.uint8)


def segmentation_layout(name: str, root: Path, sample_corpus: Path) -> Path:
    """`name`'s layout at ROOT from the sample VOC set; returns the root to read."""
    voc = sample_corpus / "eval" / "voc"
    for id_ in VOC_IDS:
        image, label = voc / "JPEGImages" / f"{id_}.jpg", voc_label(sample_corpus, id_)
        if name == "context59":
            copy_image(image, root / "JPEGImages" / f"{id_}.jpg")
            write_png(root / "SegmentationClassContext" / f"{id_}.png", shifted(label))
        elif name == "ade20k":
            copy_image(image, root / "images" / "validation" / f"ADE_val_{id_}.jpg")
            write_png(root / "annotations" / "validation" / f"ADE_val_{id_}.png", shifted(label))
        elif name == "coco-stuff":
            copy_image(image, root / "images" / "val2017" / f"{id_}.jpg")
            write_png(root / "annotations" / "val2017" / f"{id_}_labelTrainIds.png", label)
    if name == "context59":
        listing = root / "ImageSets" / "SegmentationContext" / "val.txt"
        listing.parent.mkdir(parents=True)
        listing.write_text("\n".join(VOC_IDS) + "\n")
    if name == "coco-object":
        coco_object(root, sample_corpus)
    return root


def coco_object(root: Path, sample_corpus: Path) -> None:
    """images/val2017/ and annotations/instances_val2017.json: each class region of the sample's
    label maps as one instance of COCO object (class + 1), RLE-encoded."""
    from pycocotools import mask as mask_utils

    ids = coco_category_ids()
    images, annotations = [], []
    for n, id_ in enumerate(VOC_IDS, 1):
        label = voc_label(sample_corpus, id_)
        copy_image(
            sample_corpus / "eval" / "voc" / "JPEGImages" / f"{id_}.jpg", root / "images" / "val2017" / f"{n:012d}.jpg"
        )
        images.append({"id": n, "file_name": f"{n:012d}.jpg", "height": label.shape[0], "width": label.shape[1]})
        for value in sorted(set(np.unique(label)) - {255}):
            region = np.asfortranarray((label == value).astype(np.uint8))
            rle = mask_utils.encode(region)
            rle["counts"] = rle["counts"].decode()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": ids[int(value)],  # class v is COCO object v, label v + 1
                    "segmentation": rle,
                    "area": float(region.sum()),
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": str(c), "supercategory": ""} for c in ids]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
