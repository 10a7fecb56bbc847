"""Zarr layout and storage encodings of SAM mask logits.

A part's `PART.zarr` is a Zarr v3 group holding
    logits            [n_images, slots, M, 256, 256]   slots = P * rounds, one chunk per image
stored as one shard (Zarr's sharding codec): the part's images go out in one PUT, not one per
image, and a reader still fetches one image's chunk with a ranged read. Slots beyond an image's
`n_prompts` hold the array's fill value. The teacher actor that made a part encodes the whole
group in memory (`logits_group_objects`) and writes its objects; nothing writes a group twice
(Zarr loses data when several writers share a shard).

Encodings (the `precision` of the SAM manifest):
    fp16           logits as float16; fill NaN. Probability error <= FP16_MAX_PROB_ERROR.
    uint8_sigmoid  round(255 * sigmoid(logit)); fill 0. Decoded to the logit of q/255 clipped to
                   [0.5/255, 1 - 0.5/255], so the probability error is <= 0.5/255 (UINT8_MAX_PROB_ERROR).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zarr

from storage_schemas.store.root import StoreRoot

LOW_RES = 256  # SAM's low-resolution mask side for a 1024 px input
PRECISIONS = ("fp16", "uint8_sigmoid")
UINT8_MAX_PROB_ERROR = 0.5 / 255
# fp16 keeps 11 significant bits: |dp| <= max_x sigmoid'(x) * |x| * 2**-11 = 0.2240 * 2**-11.
FP16_MAX_PROB_ERROR = 0.2240 * 2.0**-11
_EPS = 0.5 / 255


def num_masks(multimask: bool) -> int:
    """M, the masks SAM's decoder returns per prompt: 3 with multimask output, else 1."""
    return 3 if multimask else 1


def storage_dtype(precision: str) -> np.dtype:
    return {"fp16": np.dtype(np.float16), "uint8_sigmoid": np.dtype(np.uint8)}[_check(precision)]


def fill_value(precision: str) -> Any:
    return {"fp16": np.float16("nan"), "uint8_sigmoid": np.uint8(0)}[_check(precision)]


def encode_logits(logits, precision: str):
    """logits: float [..., 256, 256] -> the stored dtype of `precision`. A torch tensor is encoded
    where it lives (the teacher quantises on its GPU, so a quarter of the float32 bytes come back),
    with the same rule: round half to even."""
    if isinstance(logits, torch.Tensor):
        x = logits.float()
        if _check(precision) == "fp16":
            return x.clamp(-65504, 65504).to(torch.float16)
        return torch.round(torch.sigmoid(x) * 255.0).to(torch.uint8)
    x = np.asarray(logits, dtype=np.float32)
    if _check(precision) == "fp16":
        return np.clip(x, -65504, 65504).astype(np.float16)
    prob = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid without overflow warnings
    return np.rint(prob * 255.0).astype(np.uint8)


def decode_logits(stored, precision: str):
    """The stored dtype of `precision` -> float32 logits (fill slots decode to NaN or 0.5/255). A
    torch tensor is decoded where it lives, to the same values: the trainer's loaders ship the
    stored bytes (a quarter of float32's for uint8) and its GPU decodes them, not the workers' CPUs."""
    if isinstance(stored, torch.Tensor):
        if _check(precision) == "fp16":
            return stored.float()
        return torch.from_numpy(_UINT8_LOGITS).to(stored.device)[stored.int()]
    if _check(precision) == "fp16":
        return np.asarray(stored, dtype=np.float32)
    prob = np.clip(np.asarray(stored, dtype=np.float32) / 255.0, _EPS, 1.0 - _EPS)
    return np.log(prob) - np.log1p(-prob)


def open_logits(storage: StoreRoot, rel: str) -> zarr.Array:
    group = zarr.open_group(zarr_store(storage, rel, read_only=True), mode="r")
    return group["logits"]


def zarr_store(storage: StoreRoot, rel: str, read_only: bool = False):
    """A Zarr store at ROOT/`rel` on the storage's filesystem."""
    if storage.is_local:
        return zarr.storage.LocalStore(storage.full(rel), read_only=read_only)
    return zarr.storage.FsspecStore.from_url(
        storage.url_of(rel),
        storage_options={**storage.storage_options, "asynchronous": True},
        read_only=read_only,
    )


def _check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"mask logit precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


_UINT8_LOGITS = decode_logits(np.arange(256, dtype=np.uint8), "uint8_sigmoid")  # float32 [256]: q -> logit


def logits_group_objects(stored: np.ndarray, precision: str) -> dict[str, bytes]:
    """A part's whole logits group, encoded in memory: stored [n, slots, M, 256, 256] in the storage
    dtype -> {path inside the group: object bytes}, for the caller to write as whole files."""
    backing: dict = {}
    n, slots, masks = stored.shape[:3]
    group = zarr.open_group(zarr.storage.MemoryStore(store_dict=backing), mode="w")
    arr = group.create_array(
        "logits",
        shape=stored.shape,
        chunks=(1, slots, masks, LOW_RES, LOW_RES),
        shards=(max(1, n), slots, masks, LOW_RES, LOW_RES),
        dtype=storage_dtype(precision),
        fill_value=fill_value(precision),
        compressors=zarr.codecs.ZstdCodec(level=3),
        dimension_names=("image", "slot", "mask", "y", "x"),
        attributes={"precision": precision},
        config={"write_empty_chunks": True},  # an all-fill image still gets its chunk
    )
    if n:
        arr[:] = stored
    return {key: value.to_bytes() for key, value in backing.items()}


class UnitLogits:
    """A unit's logits over its parts, read like one array whose image axis is the unit's stored
    images in sample order: `logits[n]`, `logits[n, slots]` with an integer n (one image a read)."""

    def __init__(self, arrays: list[zarr.Array], sample_indexes: list[np.ndarray]):
        """arrays[j] holds the images of part j; sample_indexes[j] their sample indexes, row by row."""
        self.arrays = arrays
        self.part_sizes = [len(idx) for idx in sample_indexes]  # images each part's table lists
        order = np.concatenate(sample_indexes) if sample_indexes else np.zeros(0, np.int64)
        where = [(j, r) for j, idx in enumerate(sample_indexes) for r in range(len(idx))]
        self._where = [where[i] for i in np.argsort(order, kind="stable")]
        first = arrays[0].shape[1:] if arrays else (0, 0, LOW_RES, LOW_RES)
        self.shape = (len(self._where), *first)
        self.dtype = arrays[0].dtype if arrays else None

    def where(self, n: int) -> tuple[int, int]:
        """(part, row in that part's array) of the unit's n-th image in sample order."""
        return self._where[int(n)]

    def __getitem__(self, key):
        n, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        j, r = self.where(n)
        return self.arrays[j][(r, *rest)]
