"""Where things live inside a store ROOT. Every path here is relative to ROOT.

    ROOT/
      clip/_manifest.json                      per kind, created before the first commit
      clip/SOURCE/UNIT/PART.parquet            one row per (sample, view) of the part's samples
      sam/_manifest.json
      sam/SOURCE/UNIT/PART.parquet             one row per (sample, prompt, round)
      sam/SOURCE/UNIT/PART.images.parquet      one row per stored image
      sam/SOURCE/UNIT/PART.zarr                mask logits [n_images, P * rounds, M, 256, 256]
      text/NAME.parquet                        class-name text embeddings
      _commits/KIND/SOURCE/UNIT.json           written last: what the unit holds, its parts
      _errors/KIND/SOURCE/UNIT.parquet         one row per input sample that could not be used
      _tar_index/KIND/SOURCE/SHARD.parquet     where each member of an input tar lies (storage_schemas.store.tar_index)
      indexes/NAME/                            a faiss index over the CLIP view embeddings (pipeline.gallery_index)
      queries/CHECKSUM.parquet                 a query set's teacher embeddings (pipeline.query_embeddings)
      subsets/NAME.parquet, NAME.json, NAME.png  a transfer set (storage_schemas.store.subsets)

A PART is what one teacher actor call wrote for one unit (`p0000128-3f9a1c2e`: its first sample
index and the attempt's id). Stores of schema version 1 have one part per unit, stored as
`KIND/SOURCE/UNIT{suffix}` without the unit folder (`unit_data_path`).
"""

from __future__ import annotations

import re

KINDS = ("clip", "sam")
COMMITS_DIR = "_commits"
ERRORS_DIR = "_errors"
TAR_INDEX_DIR = "_tar_index"
TEXT_DIR = "text"
INDEXES_DIR = "indexes"
QUERIES_DIR = "queries"
SUBSETS_DIR = "subsets"

# Source and unit names become path components, so keep them to a safe alphabet.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(what: str, name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"{what} name {name!r}: use letters, digits, '_', '-', '.' only")
    return name


def unit_name(shard: str, part: int | None = None) -> str:
    """`00042` for a whole shard, `sa_000123.p003` for samples 3000-3999 of a shard cut in parts."""
    return shard if part is None else f"{shard}.p{part:03d}"


def tar_index_path(kind: str, source: str, shard: str) -> str:
    return f"{TAR_INDEX_DIR}/{kind}/{source}/{shard}.parquet"


def manifest_path(kind: str) -> str:
    return f"{kind}/_manifest.json"


def unit_data_path(kind: str, source: str, unit: str, suffix: str = ".parquet") -> str:
    """Schema version 1: a unit's single data file."""
    return f"{kind}/{source}/{unit}{suffix}"


def unit_dir(kind: str, source: str, unit: str) -> str:
    return f"{kind}/{source}/{unit}"


def part_name(first_sample: int, attempt: str) -> str:
    return f"p{first_sample:07d}-{attempt}"


def part_path(kind: str, source: str, unit: str, part: str, suffix: str = ".parquet") -> str:
    return f"{unit_dir(kind, source, unit)}/{part}{suffix}"


def commit_path(kind: str, source: str, unit: str) -> str:
    return f"{COMMITS_DIR}/{kind}/{source}/{unit}.json"


def errors_path(kind: str, source: str, unit: str) -> str:
    return f"{ERRORS_DIR}/{kind}/{source}/{unit}.parquet"


def text_path(name: str) -> str:
    return f"{TEXT_DIR}/{check_name('text table', name)}.parquet"


def index_dir(name: str) -> str:
    return f"{INDEXES_DIR}/{check_name('index', name)}"


def query_path(checksum: str) -> str:
    return f"{QUERIES_DIR}/{check_name('query set', checksum)}.parquet"


def subset_path(name: str, suffix: str = ".parquet") -> str:
    return f"{SUBSETS_DIR}/{check_name('subset', name)}{suffix}"
