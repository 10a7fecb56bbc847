"""Evaluation and query image sets as people have them on disk, read the same way by both sides
(`student.eval` scores on them, `pipeline.transfer` embeds query sets from them).

Open first: classification.py (ImageNet, ImageNet-v2, Places365, class folders, shards) and
segmentation.py (mmsegmentation's VOC, Context, ADE20k, COCO-Stuff, COCO-Object layouts).

class_names.py    each benchmark's class names, shipped in class_names/
folders.py        encoded images from folders and shards; the decode-or-skip rule
loading.py        decoding on a thread pool ahead of the model, in order

    ds = open_dataset("ade20k", "data/ADEChallengeData2016", skipped)
    for key, image, label in ds.samples(workers=4, limit=100): ...
"""

from __future__ import annotations

from typing import Any

from storage_schemas.datasets.classification import CLASSIFICATION, ClassificationSet, classification_set
from storage_schemas.datasets.segmentation import SEGMENTATION, SegmentationSet, segmentation_set

# The text table (`python -m pipeline.text_targets JOB --classes NAME`) each dataset is scored with.
TEXT_TABLES = {
    "imagenet": "imagenet",
    "imagenet-v2": "imagenet",
    "places365": "places365",
    "voc": "voc",
    "context59": "context59",
    "ade20k": "ade20k",
    "coco-stuff": "coco-stuff",
    "coco-object": "coco-object",
}


def open_dataset(name: str, root: str, skipped: list[dict], **options: Any) -> ClassificationSet | SegmentationSet:
    """The set of layout `name` (a key of CLASSIFICATION or SEGMENTATION) at `root`."""
    if name in SEGMENTATION:
        return segmentation_set(name, root, skipped, **options)
    return classification_set(name, root, skipped, **options)


__all__ = [
    "CLASSIFICATION",
    "SEGMENTATION",
    "TEXT_TABLES",
    "ClassificationSet",
    "SegmentationSet",
    "classification_set",
    "open_dataset",
    "segmentation_set",
]
