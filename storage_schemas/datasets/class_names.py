"""The class names each benchmark is scored with, shipped with the project (`class_names/`), and
class-name files of one's own.

    names = load_classnames("ade20k")            # a benchmark's list: 150 names
    names = load_classnames("my_classes.txt")    # one name per line
"""

from __future__ import annotations

import os
from functools import cache

from storage_schemas.plumbing.errors import ConfigError

HERE = os.path.join(os.path.dirname(__file__), "class_names")
# benchmark class list -> its file in class_names/ (imagenet: open_clip's names)
BENCHMARK_FILES = {
    "imagenet": None,
    "places365": "places365.txt",
    "ade20k": "ade20k.txt",
    "context59": "context59.txt",
    "coco-stuff": "coco-stuff.txt",
    "coco-object": "coco80.txt",  # background first, then COCO's 80 objects
    "voc": "voc.txt",
}
BACKGROUND = "background"


def read_lines(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@cache
def benchmark_classes(name: str) -> tuple[str, ...]:
    """The class names of a benchmark list (a key of BENCHMARK_FILES), in label order."""
    if name == "imagenet":
        from open_clip import zero_shot_metadata

        return tuple(zero_shot_metadata.IMAGENET_CLASSNAMES)
    names = read_lines(os.path.join(HERE, BENCHMARK_FILES[name]))
    return tuple([BACKGROUND, *names] if name == "coco-object" else names)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """ImageNet-1k's WordNet ids in label order (n01440764 is label 0)."""
    return tuple(read_lines(os.path.join(HERE, "imagenet_wnids.txt")))


@cache
def coco_category_ids() -> tuple[int, ...]:
    """The COCO category id of each of the 80 objects of coco80.txt, in that order."""
    return tuple(int(v) for v in read_lines(os.path.join(HERE, "coco80_ids.txt")))


def load_classnames(spec: str) -> list[str]:
    """A benchmark's class names (`spec` a key of BENCHMARK_FILES) or a file's, one per line."""
    if spec in BENCHMARK_FILES:
        return list(benchmark_classes(spec))
    if not os.path.isfile(spec):
        raise ConfigError(
            f"classes '{spec}': expected a file with one class name per line or one of {', '.join(BENCHMARK_FILES)}"
        )
    names = read_lines(spec)
    if not names:
        raise ConfigError(f"classes '{spec}': the file has no class names")
    return names
