"""Image sets read by both sides: class folders, plain image folders and VOC-style sets on local
disk, webdataset shards at any fsspec URL. Evaluation reads labelled sets; `pipeline.transfer_set`
reads query sets (labels optional) as encoded bytes, to embed them on the teacher's actors.

    names, samples = labelled_images("imagenet/val", skipped)          # ROOT/CLASS/*.jpg
    names, samples = labelled_images("val-{000..009}.tar", skipped, classes="names.txt")
    for key, image, label in samples: ...                               # PIL RGB, int

    for image in encoded_images("queries/"): ...   # ROOT/CLASS/*.jpg, ROOT/*.jpg or shards
        image.key, image.label, image.data          # label None without classes

    seg = SegmentationSet("VOC2012", skipped, split="val")              # JPEGImages/ + SegmentationClass/
    for key, image, label_map in seg: ...                               # PIL RGB, uint8 [H, W], 255 = ignore

Images decode by the store's rule (`storage_schemas.pixels.decode`: EXIF orientation, RGB). An image that
does not decode is skipped and recorded in `skipped` as {"key", "reason", "detail"}, as the
pipeline's errors tables do; the evaluation reports the count.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple

import braceexpand
import numpy as np
from PIL import Image

from storage_schemas.pixels.decode import DecodeError, decode_image
from storage_schemas.pixels.tar_samples import IMAGE_EXTENSIONS, iter_tar_samples
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.remote_files import stat_url

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
]
LabelledSample = tuple[str, Image.Image, int]


def decode_or_skip(data: bytes, key: str, skipped: list[dict]) -> Image.Image | None:
    """The decoded image, or None with the reason recorded in `skipped`."""
    try:
        return decode_image(data).image
    except DecodeError as e:
        skipped.append({"key": key, "reason": e.reason, "detail": e.detail})
        return None


class EncodedImage(NamedTuple):
    key: str  # CLASS/NAME in a class-folder tree, NAME in a plain folder, SHARD/KEY in shards
    label: int | None  # class index (folder order or the shard's class member), None without classes
    data: bytes  # the file as stored


def _is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS


def class_folders(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def encoded_images(
    spec: str, storage_options: dict[str, Any] | None = None, class_field: str = "cls"
) -> Iterator[EncodedImage]:
    """Every image of a class-folder tree (labels in folder order), a plain folder of images (no
    labels) or webdataset shards (`spec` ends in .tar, brace patterns allowed; the `class_field`
    member is the label where present), in a stable order, undecoded."""
    if spec.endswith(".tar"):
        yield from _shard_images(spec, class_field, storage_options)
        return
    if not os.path.isdir(spec):
        raise ConfigError(
            f"data '{spec}': expected a folder of images, one with a sub-folder per class, or .tar shards"
        )
    folders = class_folders(spec)
    for label, folder in list(enumerate(folders)) if folders else [(None, "")]:
        where = os.path.join(spec, folder)
        for name in sorted(os.listdir(where)):
            if _is_image(name):
                with open(os.path.join(where, name), "rb") as f:
                    yield EncodedImage(f"{folder}/{name}" if folder else name, label, f.read())


def _shard_images(pattern: str, class_field: str, storage_options: dict[str, Any] | None) -> Iterator[EncodedImage]:
    for url in braceexpand.braceexpand(pattern):
        shard = url.rsplit("/", 1)[-1][: -len(".tar")]
        try:
            stat_url(url, storage_options)
        except FileNotFoundError:
            raise ConfigError(f"data '{pattern}': shard {url} not found") from None
        for sample in iter_tar_samples(url, storage_options):
            image = sample.image()
            if image is None:
                raise ConfigError(
                    f"{url}: sample '{sample.key}' has no image member (has: {', '.join(sample.members)})"
                )
            label = sample.members.get(class_field)
            yield EncodedImage(
                f"{shard}/{sample.key}", int(label.decode().strip()) if label is not None else None, image[1]
            )


def labelled_images(
    spec: str,
    skipped: list[dict],
    classes: str | None = None,
    class_field: str = "cls",
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[str], Iterator[LabelledSample]]:
    """Class names and (key, image, label) samples of an image-folder tree or of webdataset shards.

    Folder: one sub-folder per class, sorted by name (ImageFolder's order); the class names are the
    folder names, or the lines of `classes` in that order (for WordNet-id folders).
    Shards (`spec` ends in .tar, brace patterns allowed): each sample's `class_field` member holds
    its integer label; `classes` names them.
    """
    if spec.endswith(".tar"):
        if classes is None:
            raise ConfigError(f"--classes is needed with webdataset shards ('{spec}'): a file naming label 0, 1, ...")
        names = load_classnames(classes)
    else:
        if not os.path.isdir(spec):
            raise ConfigError(f"data '{spec}': expected a folder with one sub-folder per class, or .tar shards")
        folders = class_folders(spec)
        if not folders:
            raise ConfigError(f"data '{spec}': no class sub-folders")
        names = folders if classes is None else load_classnames(classes)
        if len(names) != len(folders):
            raise ConfigError(f"--classes '{classes}' names {len(names)} classes, '{spec}' has {len(folders)} folders")
    return names, _decoded(spec, class_field, storage_options, skipped)


def _decoded(
    spec: str, class_field: str, storage_options: dict[str, Any] | None, skipped: list[dict]
) -> Iterator[LabelledSample]:
    for item in encoded_images(spec, storage_options, class_field):
        if item.label is None:
            raise ConfigError(f"{spec}: sample '{item.key}' has no '{class_field}' member")
        decoded = decode_or_skip(item.data, item.key, skipped)
        if decoded is not None:
            yield item.key, decoded, item.label


class SegmentationSet:
    """A Pascal-VOC-style set: JPEGImages/ID.jpg, SegmentationClass/ID.png (palette or grey indices,
    255 = ignore), ImageSets/Segmentation/SPLIT.txt if present (else every label PNG), and the class
    names from classes.txt in the root if present, else VOC's 21."""

    def __init__(self, root: str, skipped: list[dict], split: str = "val", classes: str | None = None):
        self.root, self.skipped = root, skipped
        if not os.path.isdir(root):
            raise ConfigError(
                f"data '{root}': no such folder (expected a Pascal-VOC-style folder holding "
                f"JPEGImages/ and SegmentationClass/)"
            )
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
        self.classnames = (
            load_classnames(classes)
            if classes
            else (load_classnames(default) if os.path.isfile(default) else list(VOC_CLASSES))
        )

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, id_: str) -> np.ndarray:
        path = os.path.join(self.root, "SegmentationClass", f"{id_}.png")
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ConfigError(
                    f"{path}: label maps must be palette or greyscale PNGs of class indices, not {im.mode}"
                )
            return np.asarray(im)

    def __iter__(self) -> Iterator[tuple[str, Image.Image, np.ndarray]]:
        for id_ in self.ids:
            paths = [
                os.path.join(self.root, "JPEGImages", f"{id_}.jpg"),
                os.path.join(self.root, "SegmentationClass", f"{id_}.png"),
            ]
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


def load_classnames(spec: str) -> list[str]:
    """'imagenet' (open_clip's 1000 names) or a file with one class name per line."""
    if spec == "imagenet":
        from open_clip import zero_shot_metadata

        return list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    if not os.path.isfile(spec):
        raise ConfigError(f"classes '{spec}': expected 'imagenet' or a file with one class name per line")
    with open(spec) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ConfigError(f"classes '{spec}': the file has no class names")
    return names
