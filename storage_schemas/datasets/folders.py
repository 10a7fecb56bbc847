"""Images as encoded bytes from a folder tree or webdataset shards, and the decode rule every set
shares. `pipeline.transfer_set` reads its query sets with `encoded_images` (labels optional) to
embed them on the teacher's actors; the classification sets of `classification.py` read theirs.

    for image in encoded_images("queries/"): ...   # ROOT/CLASS/*.jpg, ROOT/*.jpg or shards
        image.key, image.label, image.data          # label None without classes

Images decode by the store's rule (`storage_schemas.pixels.decode`: EXIF orientation, RGB). An image
that does not decode is skipped and recorded in `skipped` as {"key", "reason", "detail"}, as the
pipeline's errors tables do; an evaluation reports the count.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, NamedTuple

import braceexpand
from PIL import Image

from storage_schemas.pixels.decode import DecodeError, decode_image
from storage_schemas.pixels.tar_samples import IMAGE_EXTENSIONS, iter_tar_samples
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.remote_files import stat_url


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


def is_image(name: str) -> bool:
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
        yield from shard_images(spec, class_field, storage_options)
        return
    if not os.path.isdir(spec):
        raise ConfigError(
            f"data '{spec}': expected a folder of images, one with a sub-folder per class, or .tar shards"
        )
    folders = class_folders(spec)
    for label, folder in list(enumerate(folders)) if folders else [(None, "")]:
        where = os.path.join(spec, folder)
        for name in sorted(os.listdir(where)):
            if is_image(name):
                with open(os.path.join(where, name), "rb") as f:
                    yield EncodedImage(f"{folder}/{name}" if folder else name, label, f.read())


def shard_images(pattern: str, class_field: str, storage_options: dict[str, Any] | None) -> Iterator[EncodedImage]:
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
