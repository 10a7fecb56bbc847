"""Labelled image sets for zero-shot classification, in the layouts their releases unpack to.

    ds = classification_set("imagenet-v2", "imagenetv2-matched-frequency-format-val", skipped)
    ds.classnames                                     # open_clip's 1000 ImageNet names
    for key, image, label in ds.samples(workers=4): ...   # PIL RGB, int; decoded on threads

    imagefolder   ROOT/CLASS/*.jpg, classes in folder order (names: the folders, or --classes)
    imagenet      val as WordNet-id folders (ROOT/n01440764/*.JPEG), or the flat val folder
                  (ROOT/ILSVRC2012_val_00000001.JPEG) with LOC_val_solution.csv in it or above it
    imagenet-v2   ROOT/0 ... ROOT/999, the folder's number is the label (not its name's order)
    places365     ROOT/val_256/ or ROOT/val_large/ with places365_val.txt in ROOT or in
                  ROOT/filelist_places365-standard/ ("Places365_val_00000001.jpg 165")
    wds           webdataset shards (ROOT ends in .tar, brace patterns allowed) with an integer
                  label member (`class_field`); names from --classes

`classes` (a file or a benchmark list) names the set's classes instead: label values present in the
set, in their order, map to its lines (a run on a subset of ImageNet's classes names just those).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator

from PIL import Image

from storage_schemas.datasets.class_names import benchmark_classes, imagenet_wnids, load_classnames
from storage_schemas.datasets.folders import (
    EncodedImage,
    class_folders,
    decode_or_skip,
    is_image,
    shard_images,
)
from storage_schemas.datasets.loading import load_in_order
from storage_schemas.plumbing.errors import ConfigError

LabelledSample = tuple[str, Image.Image, int]


@dataclass
class ClassificationSet:
    name: str  # the layout (a key of CLASSIFICATION)
    root: str
    classnames: list[str]
    files: Callable[[], Iterator[EncodedImage]]  # the set's images in a stable order, labels mapped
    skipped: list[dict]  # {key, reason, detail} of each image left out

    def load(self, item: EncodedImage) -> LabelledSample | None:
        image = decode_or_skip(item.data, item.key, self.skipped)
        return None if image is None else (item.key, image, item.label)

    def samples(self, workers: int = 4, limit: int | None = None) -> Iterator[LabelledSample]:
        """(key, image, label) of the first `limit` images (all by default), decoded `workers` at a time."""
        return load_in_order(islice(self.files(), limit), self.load, workers)

    def __iter__(self) -> Iterator[LabelledSample]:
        return self.samples(workers=0)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def images_in(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if is_image(n))


def require_folder(root: str, layout: str) -> None:
    if not os.path.isdir(root):
        raise ConfigError(f"data '{root}': no such folder (expected {layout})")


def relabel(present: list[int], names: list[str], classes: str | None, root: str) -> tuple[list[str], dict[int, int]]:
    """The class names and label map of a set whose labels `present` (sorted) index `names`; with
    `classes`, its lines name the present labels in their order instead."""
    if classes is None:
        return names, {label: label for label in present}
    override = load_classnames(classes)
    if len(override) != len(present):
        raise ConfigError(f"--classes '{classes}' names {len(override)} classes, '{root}' has {len(present)}")
    return override, {label: i for i, label in enumerate(present)}


def folder_tree(root: str, labels: dict[str, int], mapping: dict[int, int]) -> Callable[[], Iterator[EncodedImage]]:
    """ROOT/FOLDER/*.jpg, folders in label order, each image labelled mapping[labels[FOLDER]]."""

    def files() -> Iterator[EncodedImage]:
        for folder in sorted(labels, key=labels.__getitem__):
            for name in images_in(os.path.join(root, folder)):
                yield EncodedImage(
                    f"{folder}/{name}", mapping[labels[folder]], read_file(os.path.join(root, folder, name))
                )

    return files


def imagefolder(root: str, skipped: list[dict], classes: str | None = None, **_: Any) -> ClassificationSet:
    require_folder(root, "one sub-folder of images per class")
    folders = class_folders(root)
    if not folders:
        raise ConfigError(f"data '{root}': no class sub-folders (expected ROOT/CLASS/*.jpg)")
    labels = {f: i for i, f in enumerate(folders)}
    names, mapping = relabel(list(range(len(folders))), folders, classes, root)
    return ClassificationSet("imagefolder", root, names, folder_tree(root, labels, mapping), skipped)


def find_upwards(root: str, name: str, levels: int = 4) -> str | None:
    where = os.path.abspath(root)
    for _ in range(levels + 1):
        if os.path.isfile(os.path.join(where, name)):
            return os.path.join(where, name)
        where = os.path.dirname(where)
    return None


def imagenet(root: str, skipped: list[dict], classes: str | None = None, **_: Any) -> ClassificationSet:
    require_folder(root, "ImageNet val: WordNet-id folders, or the flat val folder with LOC_val_solution.csv")
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    folders = class_folders(root)
    names_1k = list(benchmark_classes("imagenet"))
    if folders:
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ConfigError(f"data '{root}': folder '{unknown[0]}' is not an ImageNet-1k WordNet id (n01440764 ...)")
        labels = {f: index[f] for f in folders}
        names, mapping = relabel(sorted(labels.values()), names_1k, classes, root)
        return ClassificationSet("imagenet", root, names, folder_tree(root, labels, mapping), skipped)
    solution = find_upwards(root, "LOC_val_solution.csv")
    if solution is None:
        raise ConfigError(
            f"data '{root}': no WordNet-id folders and no LOC_val_solution.csv in it or above it "
            "(expected ImageNet's val in one of its two layouts)"
        )
    with open(solution, newline="") as f:
        wnid_of = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    files = images_in(root)
    labels = {}
    for name in files:
        wnid = wnid_of.get(name.rsplit(".", 1)[0])
        if wnid is None or wnid not in index:
            raise ConfigError(f"{solution}: no ImageNet-1k label for {os.path.join(root, name)}")
        labels[name] = index[wnid]
    names, mapping = relabel(sorted(set(labels.values())), names_1k, classes, root)

    def listed() -> Iterator[EncodedImage]:
        for name in files:
            yield EncodedImage(name, mapping[labels[name]], read_file(os.path.join(root, name)))

    return ClassificationSet("imagenet", root, names, listed, skipped)


def imagenet_v2(root: str, skipped: list[dict], classes: str | None = None, **_: Any) -> ClassificationSet:
    require_folder(root, "ImageNet-v2: folders 0 ... 999")
    folders = class_folders(root)
    if not folders:
        raise ConfigError(f"data '{root}': no class folders (expected ImageNet-v2's 0 ... 999)")
    bad = [f for f in folders if not (f.isdigit() and int(f) < 1000)]
    if bad:
        raise ConfigError(f"data '{root}': folder '{bad[0]}' is not a class number 0 ... 999 (ImageNet-v2's layout)")
    labels = {f: int(f) for f in folders}  # numeric: folder 10 is class 10, not the third in name order
    names, mapping = relabel(sorted(labels.values()), list(benchmark_classes("imagenet")), classes, root)
    return ClassificationSet("imagenet-v2", root, names, folder_tree(root, labels, mapping), skipped)


def places365(root: str, skipped: list[dict], classes: str | None = None, **_: Any) -> ClassificationSet:
    require_folder(root, "Places365: val_256/ or val_large/ and places365_val.txt")
    images = next(
        (os.path.join(root, d) for d in ("val_256", "val_large") if os.path.isdir(os.path.join(root, d))), None
    )
    if images is None:
        raise ConfigError(f"data '{root}': no val_256/ or val_large/ folder (expected Places365's val images)")
    candidates = [
        os.path.join(root, "places365_val.txt"),
        os.path.join(root, "filelist_places365-standard", "places365_val.txt"),
    ]
    listing = next((c for c in candidates if os.path.isfile(c)), None)
    if listing is None:
        raise ConfigError(f"data '{root}': no {candidates[0]} or {candidates[1]} (Places365's val labels)")
    entries = []
    with open(listing) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= 365:
                raise ConfigError(f"{listing}:{no}: expected 'FILE LABEL' with a label 0 ... 364, got {line.strip()!r}")
            entries.append((parts[0], int(parts[1])))
    names, mapping = relabel(
        sorted({label for _, label in entries}), list(benchmark_classes("places365")), classes, root
    )

    def listed() -> Iterator[EncodedImage]:
        for name, label in entries:
            path = os.path.join(images, name)
            if not os.path.isfile(path):
                skipped.append({"key": name, "reason": "missing_file", "detail": path})
                continue
            yield EncodedImage(name, mapping[label], read_file(path))

    return ClassificationSet("places365", root, names, listed, skipped)


def wds(
    root: str, skipped: list[dict], classes: str | None = None, class_field: str = "cls", storage_options=None, **_: Any
) -> ClassificationSet:
    if not root.endswith(".tar"):
        raise ConfigError(f"data '{root}': expected webdataset shards (a path or pattern ending in .tar)")
    if classes is None:
        raise ConfigError(f"--classes is needed with webdataset shards ('{root}'): a file naming label 0, 1, ...")
    names = load_classnames(classes)

    def members() -> Iterator[EncodedImage]:
        for item in shard_images(root, class_field, storage_options):
            if item.label is None:
                raise ConfigError(f"{root}: sample '{item.key}' has no '{class_field}' member")
            if not 0 <= item.label < len(names):
                raise ConfigError(
                    f"{root}: sample '{item.key}' has label {item.label}, not one of the {len(names)} classes"
                )
            yield item

    return ClassificationSet("wds", root, names, members, skipped)


CLASSIFICATION: dict[str, Callable[..., ClassificationSet]] = {
    "imagefolder": imagefolder,
    "imagenet": imagenet,
    "imagenet-v2": imagenet_v2,
    "places365": places365,
    "wds": wds,
}


def classification_set(name: str, root: str, skipped: list[dict] | None = None, **options: Any) -> ClassificationSet:
    """The set of layout `name` at `root`; options: classes, class_field, storage_options."""
    if name not in CLASSIFICATION:
        raise ConfigError(f"--dataset '{name}': expected one of {', '.join(CLASSIFICATION)} for classification")
    return CLASSIFICATION[name](root, [] if skipped is None else skipped, **options)
