"""Evaluation datasets: class folders and VOC-style sets on local disk, webdataset shards at any
fsspec URL.

    names, samples = labelled_images("imagenet/val", skipped)          # ROOT/CLASS/*.jpg
    names, samples = labelled_images("val-{000..009}.tar", skipped, classes="names.txt")
    for key, image, label in samples: ...                               # PIL RGB, int

    seg = SegmentationSet("VOC2012", skipped, split="val")              # JPEGImages/ + SegmentationClass/
    for key, image, label_map in seg: ...                               # PIL RGB, uint8 [H, W], 255 = ignore

Images decode by the store's rule (`storage_schemas.decode`: EXIF orientation, RGB). An image that
does not decode is skipped and recorded in `skipped` as {"key", "reason", "detail"}, as the
pipeline's errors tables do; the evaluation reports the count.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import braceexpand
import numpy as np
from PIL import Image

from storage_schemas.class_texts import load_classnames
from storage_schemas.decode import DecodeError, decode_image
from storage_schemas.errors import ConfigError
from storage_schemas.tar_samples import IMAGE_EXTENSIONS, iter_tar_samples

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train",
               "tv monitor"]
LabelledSample = tuple[str, Image.Image, int]


def decode_or_skip(data: bytes, key: str, skipped: list[dict]) -> Image.Image | None:
    """The decoded image, or None with the reason recorded in `skipped`."""
    try:
        return decode_image(data).image
    except DecodeError as e:
        skipped.append({"key": key, "reason": e.reason, "detail": e.detail})
        return None


def labelled_images(spec: str, skipped: list[dict], classes: str | None = None, class_field: str = "cls",
                    storage_options: dict[str, Any] | None = None) -> tuple[list[str], Iterator[LabelledSample]]:
    """Class names and (key, image, label) samples of an image-folder tree or of webdataset shards.

    Folder: one sub-folder per class, sorted by name (ImageFolder's order); the class names are the
    folder names, or the lines of `classes` in that order (for WordNet-id folders).
    Shards (`spec` ends in .tar, brace patterns allowed): each sample's `class_field` member holds
    its integer label; `classes` names them.
    """
    if spec.endswith(".tar"):
        if classes is None:
            raise ConfigError(f"--classes is needed with webdataset shards ('{spec}'): a file naming label 0, 1, ...")
        return load_classnames(classes), _shard_samples(spec, class_field, storage_options, skipped)
    if not os.path.isdir(spec):
        raise ConfigError(f"data '{spec}': expected a folder with one sub-folder per class, or .tar shards")
    folders = sorted(d for d in os.listdir(spec) if os.path.isdir(os.path.join(spec, d)))
    if not folders:
        raise ConfigError(f"data '{spec}': no class sub-folders")
    names = folders if classes is None else load_classnames(classes)
    if len(names) != len(folders):
        raise ConfigError(f"--classes '{classes}' names {len(names)} classes, '{spec}' has {len(folders)} folders")
    return names, _folder_samples(spec, folders, skipped)


def _folder_samples(root: str, folders: list[str], skipped: list[dict]) -> Iterator[LabelledSample]:
    for label, folder in enumerate(folders):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
                continue
            with open(os.path.join(root, folder, name), "rb") as f:
                image = decode_or_skip(f.read(), f"{folder}/{name}", skipped)
            if image is not None:
                yield f"{folder}/{name}", image, label


def _shard_samples(pattern: str, class_field: str, storage_options: dict[str, Any] | None,
                   skipped: list[dict]) -> Iterator[LabelledSample]:
    for url in braceexpand.braceexpand(pattern):
        for sample in iter_tar_samples(url, storage_options):
            image = sample.image()
            if image is None or class_field not in sample.members:
                raise ConfigError(f"{url}: sample '{sample.key}' has no image or no '{class_field}' member "
                                  f"(has: {', '.join(sample.members)})")
            decoded = decode_or_skip(image[1], f"{url}:{sample.key}", skipped)
            if decoded is not None:
                yield sample.key, decoded, int(sample.members[class_field].decode().strip())


class SegmentationSet:
    """A Pascal-VOC-style set: JPEGImages/ID.jpg, SegmentationClass/ID.png (palette or grey indices,
    255 = ignore), ImageSets/Segmentation/SPLIT.txt if present (else every label PNG), and the class
    names from classes.txt in the root if present, else VOC's 21."""

    def __init__(self, root: str, skipped: list[dict], split: str = "val", classes: str | None = None):
        self.root, self.skipped = root, skipped
        if not os.path.isdir(root):
            raise ConfigError(f"data '{root}': no such folder (expected a Pascal-VOC-style folder holding "
                              f"JPEGImages/ and SegmentationClass/)")
        for sub in ("JPEGImages", "SegmentationClass"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise ConfigError(f"data '{root}': no {sub}/ folder (expected a Pascal-VOC-style layout)")
        listings = os.path.join(root, "ImageSets", "Segmentation")
        if os.path.isdir(listings):
            listing = os.path.join(listings, f"{split}.txt")
            if not os.path.isfile(listing):
                have = sorted(n[:-4] for n in os.listdir(listings) if n.endswith(".txt"))
                raise ConfigError(f"split '{split}': no {listing} (splits: {', '.join(have) or 'none'})")
            with open(listing) as f:
                self.ids = [line.strip() for line in f if line.strip()]
        else:  # no split listings at all: every labelled image
            self.ids = sorted(n[:-4] for n in os.listdir(os.path.join(root, "SegmentationClass")) if n.endswith(".png"))
        default = os.path.join(root, "classes.txt")
        self.classnames = load_classnames(classes) if classes else (
            load_classnames(default) if os.path.isfile(default) else list(VOC_CLASSES))

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, id_: str) -> np.ndarray:
        path = os.path.join(self.root, "SegmentationClass", f"{id_}.png")
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ConfigError(f"{path}: label maps must be palette or greyscale PNGs of class indices, not {im.mode}")
            return np.asarray(im)

    def __iter__(self) -> Iterator[tuple[str, Image.Image, np.ndarray]]:
        for id_ in self.ids:
            paths = [os.path.join(self.root, "JPEGImages", f"{id_}.jpg"),
                     os.path.join(self.root, "SegmentationClass", f"{id_}.png")]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                self.skipped.append({"key": id_, "reason": "missing_file", "detail": ", ".join(missing)})
                continue
            with open(paths[0], "rb") as f:
                image = decode_or_skip(f.read(), id_, self.skipped)
            if image is None:
                continue
            label = self.label(id_)
            if label.shape != (image.height, image.width):
                raise ConfigError(f"{id_}: label map {label.shape} and image {(image.height, image.width)} differ")
            yield id_, image, label
