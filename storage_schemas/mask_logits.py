"""Zarr layout and storage encodings of SAM mask logits.

`UNIT.zarr` is a Zarr v3 group holding
    logits            [n_images, slots, M, 256, 256]   slots = P * rounds, one chunk per image
Slots beyond an image's `n_prompts` hold the array's fill value. One process writes a unit's
arrays, whole chunks at a time: Zarr loses data when several writers share a chunk or shard.

Encodings (the `precision` of the SAM manifest):
    fp16           logits as float16; fill NaN. Probability error <= FP16_MAX_PROB_ERROR.
    uint8_sigmoid  round(255 * sigmoid(logit)); fill 0. Decoded to the logit of q/255 clipped to
                   [0.5/255, 1 - 0.5/255], so the probability error is <= 0.5/255 (UINT8_MAX_PROB_ERROR).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from storage_schemas.storage import Storage

LOW_RES = 256  # SAM's low-resolution mask side for a 1024 px input
PRECISIONS = ("fp16", "uint8_sigmoid")
UINT8_MAX_PROB_ERROR = 0.5 / 255
# fp16 keeps 11 significant bits: |dp| <= max_x sigmoid'(x) * |x| * 2**-11 = 0.2240 * 2**-11.
FP16_MAX_PROB_ERROR = 0.2240 * 2.0**-11
_EPS = 0.5 / 255


def storage_dtype(precision: str) -> np.dtype:
    return {"fp16": np.dtype(np.float16), "uint8_sigmoid": np.dtype(np.uint8)}[_check(precision)]


def fill_value(precision: str) -> Any:
    return {"fp16": np.float16("nan"), "uint8_sigmoid": np.uint8(0)}[_check(precision)]


def encode_logits(logits: np.ndarray, precision: str) -> np.ndarray:
    """logits: float [..., 256, 256] -> the stored dtype of `precision`."""
    x = np.asarray(logits, dtype=np.float32)
    if _check(precision) == "fp16":
        return np.clip(x, -65504, 65504).astype(np.float16)
    prob = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without overflow warnings
    return np.rint(prob * 255.0).astype(np.uint8)


def decode_logits(stored: np.ndarray, precision: str) -> np.ndarray:
    """The stored dtype of `precision` -> float32 logits (fill slots decode to NaN or 0.5/255)."""
    if _check(precision) == "fp16":
        return np.asarray(stored, dtype=np.float32)
    prob = np.clip(np.asarray(stored, dtype=np.float32) / 255.0, _EPS, 1.0 - _EPS)
    return np.log(prob) - np.log1p(-prob)


def create_logits_array(
    storage: Storage, rel: str, n_images: int, slots: int, num_masks: int, precision: str
) -> zarr.Array:
    """Create `logits` in the group at ROOT/`rel` (overwriting), chunked one image per chunk."""
    group = zarr.open_group(zarr_store(storage, rel), mode="w")
    return group.create_array(
        "logits",
        shape=(n_images, slots, num_masks, LOW_RES, LOW_RES),
        chunks=(1, slots, num_masks, LOW_RES, LOW_RES),
        dtype=storage_dtype(precision),
        fill_value=fill_value(precision),
        compressors=zarr.codecs.ZstdCodec(level=3),
        dimension_names=("image", "slot", "mask", "y", "x"),
        attributes={"precision": precision},
    )


def open_logits(storage: Storage, rel: str) -> zarr.Array:
    group = zarr.open_group(zarr_store(storage, rel, read_only=True), mode="r")
    return group["logits"]


def zarr_store(storage: Storage, rel: str, read_only: bool = False):
    """A Zarr store at ROOT/`rel` on the storage's filesystem."""
    if storage.is_local:
        return zarr.storage.LocalStore(storage.full(rel), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(
        storage.url_of(rel), storage_options={**storage.storage_options, "asynchronous": True},
        read_only=read_only,
    )


def _check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"mask logit precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def chunk_bytes(stored: np.ndarray, precision: str) -> bytes:
    """One image's encoded chunk: stored [slots, M, 256, 256] in the storage dtype -> the bytes
    Zarr would write for it (same codecs), so a teacher worker can encode and one writer store."""
    slots, masks = stored.shape[:2]
    backing: dict = {}
    arr = zarr.create_array(
        zarr.storage.MemoryStore(store_dict=backing), shape=(1, slots, masks, LOW_RES, LOW_RES),
        chunks=(1, slots, masks, LOW_RES, LOW_RES), dtype=storage_dtype(precision), fill_value=fill_value(precision),
        compressors=zarr.codecs.ZstdCodec(level=3), dimension_names=("image", "slot", "mask", "y", "x"),
        config={"write_empty_chunks": True},  # an all-fill image still gets its chunk
    )
    arr[0] = stored
    (key,) = [k for k in backing if k.startswith("c/")]
    return backing[key].to_bytes()


def chunk_path(array_rel: str, image: int) -> str:
    """Where image `image`'s chunk lives under a logits array (Zarr v3 default chunk keys)."""
    return f"{array_rel}/c/{image}/0/0/0/0"
