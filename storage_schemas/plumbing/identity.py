"""Sample identity and the stable hashes every seed and split is derived from.

A sample is identified by (source, shard, key): img2dataset keys such as `000000000` repeat
across datasets, so the key alone is not an identity. Python's `hash()` changes from process to
process, so everything here is blake2b over a canonical byte string.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class SampleId(NamedTuple):
    source: str  # the config's name for an input group, e.g. "cc12m"
    shard: str  # input shard file name without extension, e.g. "00042" or "sa_000123"
    key: str  # sample key inside the shard, e.g. "000420017" or "sa_223750"


def stable_hash64(*parts: object) -> int:
    """A 64-bit hash of `parts` that is the same on every machine, process and Python version."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def sample_seed(store_seed: int, sample: SampleId, *salt: object) -> int:
    """The RNG seed for one sample's random choices (a view index or 'prompts' as `salt`)."""
    return stable_hash64("seed", store_seed, *sample, *salt)


def is_held_out(sample: SampleId, fraction: float) -> bool:
    """Whether `sample` belongs to the held-out split (the paper holds out 1%).

    Independent of the store seed, so every store and every run splits the corpus alike.
    """
    return stable_hash64("holdout", *sample) < fraction * 2.0**64


def pixel_hash(pixels: bytes) -> str:
    """Short hash of a rendered view's uint8 pixels, stored so replay can be checked exactly."""
    return hashlib.blake2b(pixels, digest_size=8).hexdigest()
