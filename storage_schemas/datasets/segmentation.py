"""Semantic segmentation sets in mmsegmentation's prepared layouts, labels as class indices.

    ds = segmentation_set("ade20k", "data/ADEChallengeData2016", skipped)
    ds.classnames                                        # mmsegmentation's 150 ADE classes
    for key, image, label in ds.samples(workers=4): ...  # PIL RGB, uint8 [H, W] (255 = ignore)

    voc           ROOT = VOC2012: JPEGImages/ID.jpg, SegmentationClass/ID.png (palette indices),
                  ImageSets/Segmentation/SPLIT.txt (else every label); classes.txt in ROOT, else
                  VOC's 21 with background
    context59     ROOT = VOC2010: JPEGImages/, SegmentationClassContext/ID.png,
                  ImageSets/SegmentationContext/SPLIT.txt; 0 is ignored, 1..59 -> 0..58
    ade20k        ROOT = ADEChallengeData2016: images/SPLIT/*.jpg, annotations/SPLIT/*.png
                  (SPLIT: validation); 0 is ignored, 1..150 -> 0..149
    coco-stuff    ROOT: images/SPLIT/*.jpg, annotations/SPLIT/*_labelTrainIds.png (SPLIT: val2017);
                  171 classes, 255 ignored
    coco-object   ROOT: images/SPLIT/*.jpg (or SPLIT/*.jpg), annotations/instances_SPLIT.json;
                  the instances rasterised to background (0) and COCO's 80 objects (1..80),
                  smaller instances over larger ones, crowd regions outside them ignored

A label file whose value is not a class (after the layout's mapping) stops the run with its path.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from storage_schemas.datasets.class_names import benchmark_classes, coco_category_ids, load_classnames
from storage_schemas.datasets.folders import decode_or_skip
from storage_schemas.datasets.loading import load_in_order
from storage_schemas.plumbing.errors import ConfigError

IGNORE = 255
SegmentationSample = tuple[str, Image.Image, np.ndarray]


@dataclass
class SegmentationSet:
    name: str  # the layout (a key of SEGMENTATION)
    root: str
    classnames: list[str]
    ids: list[str]  # the images, in order
    image_path: Callable[[str], str]
    label_map: Callable[[str], np.ndarray]  # id -> uint8 [H, W] class indices, 255 = ignore
    label_file: Callable[[str], str]  # id -> where its label comes from, for messages
    skipped: list[dict]  # {key, reason, detail} of each image left out
    has_background: bool = False  # class 0 is "background" (voc, coco-object): --bg-threshold applies

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, id_: str) -> SegmentationSample | None:
        path = self.image_path(id_)
        if not os.path.isfile(path):
            self.skipped.append({"key": id_, "reason": "missing_file", "detail": path})
            return None
        with open(path, "rb") as f:
            image = decode_or_skip(f.read(), id_, self.skipped)
        if image is None:
            return None
        label = self.label_map(id_)
        if label.shape != (image.height, image.width):
            raise ConfigError(
                f"{self.label_file(id_)}: label map {label.shape} and image {path} {(image.height, image.width)} differ"
            )
        top = int(label[label != IGNORE].max(initial=0))
        if top >= len(self.classnames):
            raise ConfigError(
                f"{self.label_file(id_)}: label value {top}, but {self.name} has {len(self.classnames)} class names"
            )
        return id_, image, label

    def samples(self, workers: int = 4, limit: int | None = None) -> Iterator[SegmentationSample]:
        """(key, image, label) of the first `limit` images (all by default), read `workers` at a time."""
        return load_in_order(islice(self.ids, limit), self.load, workers)

    def __iter__(self) -> Iterator[SegmentationSample]:
        return self.samples(workers=0)


def require(path: str, what: str, layout: str) -> str:
    if not os.path.isdir(path):
        raise ConfigError(f"data: no {what} {path} (expected {layout})")
    return path


def read_png_indices(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such label file")
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ConfigError(f"{path}: label maps must be palette or greyscale PNGs of class indices, not {im.mode}")
        return np.asarray(im)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmsegmentation's reduce_zero_label: 0 (unlabelled) is ignored, k is class k - 1."""
    out = label.astype(np.int16) - 1
    out[label == 0] = IGNORE
    out[label == IGNORE] = IGNORE
    return out.astype(np.uint8)


def listed_ids(listing: str, split: str) -> list[str]:
    if not os.path.isfile(listing):
        folder = os.path.dirname(listing)
        have = sorted(n[:-4] for n in os.listdir(folder) if n.endswith(".txt")) if os.path.isdir(folder) else []
        raise ConfigError(f"split '{split}': no {listing} (splits: {', '.join(have) or 'none'})")
    with open(listing) as f:
        return [line.strip() for line in f if line.strip()]


def names_for(benchmark: str, classes: str | None) -> list[str]:
    return load_classnames(classes) if classes else list(benchmark_classes(benchmark))


def voc(root: str, skipped: list[dict], split: str | None = None, classes: str | None = None, **_: Any):
    layout = "a Pascal VOC folder (VOC2012) holding JPEGImages/ and SegmentationClass/"
    require(root, "folder", layout)
    images = require(os.path.join(root, "JPEGImages"), "folder", layout)
    labels = require(os.path.join(root, "SegmentationClass"), "folder", layout)
    listings = os.path.join(root, "ImageSets", "Segmentation")
    split = split or "val"
    if os.path.isdir(listings):
        ids = listed_ids(os.path.join(listings, f"{split}.txt"), split)
    else:  # no split listings at all: every labelled image
        ids = sorted(n[:-4] for n in os.listdir(labels) if n.endswith(".png"))
    own = os.path.join(root, "classes.txt")
    names = load_classnames(classes or own) if classes or os.path.isfile(own) else names_for("voc", None)
    return SegmentationSet(
        "voc",
        root,
        names,
        ids,
        lambda i: os.path.join(images, f"{i}.jpg"),
        lambda i: read_png_indices(os.path.join(labels, f"{i}.png")),
        lambda i: os.path.join(labels, f"{i}.png"),
        skipped,
        has_background=names[0] == "background",
    )


def context59(root: str, skipped: list[dict], split: str | None = None, classes: str | None = None, **_: Any):
    layout = "VOC2010 holding JPEGImages/, SegmentationClassContext/ and ImageSets/SegmentationContext/"
    require(root, "folder", layout)
    images = require(os.path.join(root, "JPEGImages"), "folder", layout)
    labels = require(os.path.join(root, "SegmentationClassContext"), "folder", layout)
    split = split or "val"
    ids = listed_ids(os.path.join(root, "ImageSets", "SegmentationContext", f"{split}.txt"), split)
    return SegmentationSet(
        "context59",
        root,
        names_for("context59", classes),
        ids,
        lambda i: os.path.join(images, f"{i}.jpg"),
        lambda i: reduce_zero_label(read_png_indices(os.path.join(labels, f"{i}.png"))),
        lambda i: os.path.join(labels, f"{i}.png"),
        skipped,
    )


def labelled_ids(labels: str, suffix: str) -> list[str]:
    """Ids of the label files LABELS/ID{suffix}, sorted."""
    return sorted(n[: -len(suffix)] for n in os.listdir(labels) if n.endswith(suffix))


def ade20k(root: str, skipped: list[dict], split: str | None = None, classes: str | None = None, **_: Any):
    split = split or "validation"
    layout = f"ADEChallengeData2016 holding images/{split}/ and annotations/{split}/"
    require(root, "folder", layout)
    images = require(os.path.join(root, "images", split), "folder", layout)
    labels = require(os.path.join(root, "annotations", split), "folder", layout)
    return SegmentationSet(
        "ade20k",
        root,
        names_for("ade20k", classes),
        labelled_ids(labels, ".png"),
        lambda i: os.path.join(images, f"{i}.jpg"),
        lambda i: reduce_zero_label(read_png_indices(os.path.join(labels, f"{i}.png"))),
        lambda i: os.path.join(labels, f"{i}.png"),
        skipped,
    )


def coco_stuff(root: str, skipped: list[dict], split: str | None = None, classes: str | None = None, **_: Any):
    split = split or "val2017"
    layout = f"COCO-Stuff holding images/{split}/ and annotations/{split}/*_labelTrainIds.png"
    require(root, "folder", layout)
    images = require(os.path.join(root, "images", split), "folder", layout)
    labels = require(os.path.join(root, "annotations", split), "folder", layout)
    suffix = "_labelTrainIds.png"
    return SegmentationSet(
        "coco-stuff",
        root,
        names_for("coco-stuff", classes),
        labelled_ids(labels, suffix),
        lambda i: os.path.join(images, f"{i}.jpg"),
        lambda i: read_png_indices(os.path.join(labels, f"{i}{suffix}")),
        lambda i: os.path.join(labels, f"{i}{suffix}"),
        skipped,
    )


def rasterise_instances(coco, image_id: int, height: int, width: int, index: dict[int, int]) -> np.ndarray:
    """uint8 [H, W]: 0 background, index[category] + 1 under each instance (smaller ones drawn over
    larger ones), 255 over crowd regions no instance covers."""
    from pycocotools import mask as mask_utils

    label = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    for ann in sorted(anns, key=lambda a: -a["area"]):
        rle = coco.annToRLE(ann)
        m = mask_utils.decode(rle).astype(bool)
        if ann.get("iscrowd"):
            crowd |= m
        else:
            label[m] = index[ann["category_id"]] + 1
    label[crowd & (label == 0)] = IGNORE
    return label


def coco_object(root: str, skipped: list[dict], split: str | None = None, classes: str | None = None, **_: Any):
    split = split or "val2017"
    layout = f"COCO holding images/{split}/ (or {split}/) and annotations/instances_{split}.json"
    require(root, "folder", layout)
    images = next(
        (p for p in (os.path.join(root, "images", split), os.path.join(root, split)) if os.path.isdir(p)), None
    )
    if images is None:
        raise ConfigError(f"data: no {os.path.join(root, 'images', split)} (expected {layout})")
    annotations = os.path.join(root, "annotations", f"instances_{split}.json")
    if not os.path.isfile(annotations):
        raise ConfigError(f"data: no {annotations} (expected {layout})")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(annotations)
    index = {cat: i for i, cat in enumerate(coco_category_ids())}
    unknown = sorted(set(coco.getCatIds()) - set(index))
    if unknown:
        raise ConfigError(f"{annotations}: category id {unknown[0]} is not one of COCO's 80 objects")
    infos = {os.path.splitext(info["file_name"])[0]: info for info in coco.loadImgs(sorted(coco.getImgIds()))}

    def label_map(id_: str) -> np.ndarray:
        info = infos[id_]
        return rasterise_instances(coco, info["id"], info["height"], info["width"], index)

    return SegmentationSet(
        "coco-object",
        root,
        names_for("coco-object", classes),
        sorted(infos),
        lambda i: os.path.join(images, infos[i]["file_name"]),
        label_map,
        lambda i: f"{annotations} (image {infos[i]['id']})",
        skipped,
        has_background=True,
    )


SEGMENTATION: dict[str, Callable[..., SegmentationSet]] = {
    "voc": voc,
    "context59": context59,
    "ade20k": ade20k,
    "coco-stuff": coco_stuff,
    "coco-object": coco_object,
}


def segmentation_set(name: str, root: str, skipped: list[dict] | None = None, **options: Any) -> SegmentationSet:
    """The set of layout `name` at `root`; options: split (each layout's default), classes."""
    if name not in SEGMENTATION:
        raise ConfigError(f"--dataset '{name}': expected one of {', '.join(SEGMENTATION)} for segmentation")
    return SEGMENTATION[name](root, [] if skipped is None else skipped, **options)
