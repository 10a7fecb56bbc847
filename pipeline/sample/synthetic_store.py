"""A synthetic target store written with storage_schemas' own writers: no Ray, no teacher.

    root = write_clip_store("/tmp/s", units=8, samples=256, part=64, views=10, dim=768)   # 384-512 px JPEGs
    root = write_sam_store("/tmp/s", units=2, images=8, part=4, prompts=32)                # ~1500 px short side

The images are scikit-image photographs cropped and resized at random (a fixed seed: the same
corpus on every machine), each CLIP sample a `.jpg`, a `.txt` caption and an img2dataset-like
`.json`, each SAM sample a `.jpg` and an SA-1B-size `.json` the student never reads. Targets are
random but shaped as the real ones: unit-norm fp16 embeddings for K stored views with their crops;
SAM prompts with box-shaped, smooth fp16 logits. Every unit is a whole shard, committed with its
tar index, so the trainer's data path reads it exactly as it reads a materialized store.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from pipeline.sample.corpus import PHOTOS, load_photo
from storage_schemas.store import TABLE_SUFFIX, layout
from storage_schemas.store.clip_views import ClipViews, views_parquet
from storage_schemas.store.commit import CommitRecord, InputRef, create_commit
from storage_schemas.store.manifest import Manifest, ensure_manifest
from storage_schemas.store.mask_logits import encode_logits, logits_group_objects
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.sam_tables import images_table, prompts_table
from storage_schemas.store.tables import parquet_bytes
from storage_schemas.store.tar_index import scan_tar_index, write_tar_index

SOURCE = "synthetic"


def _photo(rng: np.random.Generator, photos: list[np.ndarray], short: tuple[int, int], aspect: float) -> bytes:
    """A random crop of a photograph, resized so its short side is in `short`, as a JPEG."""
    img = photos[int(rng.integers(len(photos)))]
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    side = int(rng.integers(short[0], short[1] + 1))
    size = (int(side * aspect), side) if rng.random() < 0.5 else (side, int(side * aspect))
    out = io.BytesIO()
    Image.fromarray(img[y : y + ch, x : x + cw]).resize(size, Image.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def _write_shard(path: str, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, members in enumerate(samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _commit(
    storage: StoreRoot,
    kind: str,
    shard: str,
    *,
    tar: str,
    n: int,
    parts: list[tuple[str, list]],
    rows: dict[str, int],
    manifest: Manifest,
) -> None:
    size = os.path.getsize(tar)
    write_tar_index(storage, kind, SOURCE, shard, scan_tar_index(tar, None, size, None))
    create_commit(
        storage,
        CommitRecord(
            kind=kind,
            source=SOURCE,
            shard=shard,
            unit=shard,
            input=InputRef(tar, size, None, 0, None, n, 0),
            n_input=n,
            n_stored=n,
            n_errors=0,
            rows={**rows, "errors": 0},
            files=[f for _, fs in parts for f in fs],
            policy_hash=manifest.policy_hash,
            parts=[name for name, _ in parts],
        ),
    )


def _manifest(kind: str, teacher: dict, policy: dict, precision: str) -> Manifest:
    return Manifest.build(kind, {"arch": "synthetic", **teacher}, "fp16", policy, precision)


def write_clip_store(
    root: str,
    *,
    units: int = 8,
    samples: int = 256,
    part: int = 64,
    views: int = 10,
    dim: int = 768,
    short: tuple[int, int] = (384, 512),
    seed: int = 0,
) -> str:
    """`units` shards of `samples` CLIP samples under root/corpus, their targets under root/store."""
    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name, _ in PHOTOS]
    os.makedirs(f"{root}/corpus/clip", exist_ok=True)
    storage = StoreRoot(f"{root}/store")
    storage.check_reachable(create=True)
    manifest = ensure_manifest(
        storage,
        _manifest(
            "clip",
            {"output": {"embed_dim": dim}, "preprocess": {"size": [224, 224]}},
            {"seed": seed, "views": views},
            "fp16",
        ),
    )
    for u in range(units):
        shard = f"{u:05d}"
        members, sizes = [], []
        for i in range(samples):
            jpg = _photo(rng, photos, short, rng.uniform(1.0, 1.5))
            sizes.append(Image.open(io.BytesIO(jpg)).size)
            members.append(
                {
                    "jpg": jpg,
                    "txt": f"a photograph, sample {i} of shard {shard}".encode(),
                    "json": json.dumps(
                        {
                            "key": f"{i:09d}",
                            "status": "success",
                            "width": sizes[-1][0],
                            "height": sizes[-1][1],
                            "url": f"https://example.com/{u}/{i}.jpg",
                        }
                    ).encode(),
                }
            )
        tar = f"{root}/corpus/clip/{shard}.tar"
        _write_shard(tar, members)
        parts = []
        for first in range(0, samples, part):
            n = min(part, samples - first)
            lo = rng.uniform(0.0, 0.4, (n, views, 2)).astype(np.float32)
            crops = np.concatenate([lo, lo + rng.uniform(0.5, 0.6, (n, views, 2)).astype(np.float32)], axis=2)
            emb = rng.normal(size=(n, views, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=2, keepdims=True)
            v = ClipViews(
                np.arange(first, first + n, dtype=np.int32),
                [f"{i:09d}" for i in range(first, first + n)],
                np.array([s[0] for s in sizes[first : first + n]], np.int32),
                np.array([s[1] for s in sizes[first : first + n]], np.int32),
                crops,
                rng.random((n, views)) < 0.5,
                np.full((n, views), "0" * 16, dtype=object),
                emb.astype(np.float16),
            )
            name = layout.part_name(first, "5e7000000000", f"{first:08x}")
            parts.append(
                (
                    name,
                    [
                        storage.write_bytes(
                            layout.part_path("clip", SOURCE, shard, name), views_parquet(v, SOURCE, shard)
                        )
                    ],
                )
            )
        _commit(
            storage, "clip", shard, tar=tar, n=samples, parts=parts, rows={"views": samples * views}, manifest=manifest
        )
    return f"{root}/store"


def _sam_logits(rng: np.random.Generator, boxes: np.ndarray, hw: tuple[int, int], masks: int) -> np.ndarray:
    """Logits shaped like SAM's: positive inside each prompt's box, falling off smoothly outside,
    float32 [P, M, 256, 256] in the 1024-px frame's low-res grid."""
    scale = 256 / max(hw)
    ys, xs = np.mgrid[0:256, 0:256].astype(np.float32) + 0.5
    out = np.empty((len(boxes), masks, 256, 256), np.float32)
    for p, (x0, y0, x1, y1) in enumerate(boxes * scale):
        d = np.maximum(np.maximum(x0 - xs, xs - x1), np.maximum(y0 - ys, ys - y1))
        for m in range(masks):
            out[p, m] = np.clip(-d * (0.5 + 0.25 * m), -30, 30)
    return out


def write_sam_store(
    root: str,
    *,
    units: int = 2,
    images: int = 8,
    part: int = 4,
    prompts: int = 32,
    masks: int = 1,
    short: tuple[int, int] = (1400, 1600),
    json_bytes: int = 400_000,
    seed: int = 0,
    precision: str = "fp16",
) -> str:
    """`units` SA-1B-like shards of `images` images under root/corpus, SAM targets under root/store
    (`prompts` per image, logits stored in `precision`)."""
    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name, _ in PHOTOS if load_photo(name).ndim == 3]
    os.makedirs(f"{root}/corpus/sam", exist_ok=True)
    storage = StoreRoot(f"{root}/store")
    storage.check_reachable(create=True)
    points = 1
    manifest = ensure_manifest(
        storage,
        _manifest(
            "sam",
            {},
            {"seed": seed, "prompts": prompts, "rounds": 1, "points_per_prompt": points, "num_masks": masks},
            precision,
        ),
    )
    for u in range(units):
        shard = f"sa_{u:06d}"
        members, hws = [], []
        for i in range(images):
            jpg = _photo(rng, photos, short, 1.5)
            w, h = Image.open(io.BytesIO(jpg)).size
            hws.append((h, w))
            members.append(
                {"jpg": jpg, "json": json.dumps({"image": {"width": w, "height": h}, "pad": "x" * json_bytes}).encode()}
            )
        tar = f"{root}/corpus/sam/{shard}.tar"
        _write_shard(tar, members)
        parts = []
        for first in range(0, images, part):
            samples, stored = [], []
            for i in range(first, min(first + part, images)):
                h, w = hws[i]
                x0, y0 = rng.uniform(0, w * 0.6, prompts), rng.uniform(0, h * 0.6, prompts)
                boxes = np.stack(
                    [x0, y0, x0 + rng.uniform(50, w * 0.4, prompts), y0 + rng.uniform(50, h * 0.4, prompts)], 1
                ).astype(np.float32)
                centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
                stored.append(encode_logits(_sam_logits(rng, boxes, (h, w), masks), precision))
                samples.append(
                    {
                        "key": f"{i:09d}",
                        "sample_index": i,
                        "n_prompts": prompts,
                        "structure": np.full(prompts, 2),
                        "annotation_id": np.arange(prompts),
                        "boxes": boxes,
                        "points": centres[:, None, :].astype(np.float32),
                        "labels": np.ones((prompts, points), np.int64),
                        "iou": rng.uniform(0.7, 1.0, (prompts, masks)).astype(np.float32),
                        "original_hw": (h, w),
                        "n_annotations": prompts,
                        "skipped": "{}",
                    }
                )
            name = layout.part_name(first, "5e7000000000", f"{first:08x}")
            rel = layout.part_path("sam", SOURCE, shard, name, "")
            table = prompts_table(
                SOURCE, shard, samples, prompts=prompts, rounds=1, points_per_prompt=points, masks=masks
            )
            files = [
                storage.write_bytes(rel + TABLE_SUFFIX[("sam", "prompts")], parquet_bytes(table)),
                storage.write_bytes(
                    rel + TABLE_SUFFIX[("sam", "images")], parquet_bytes(images_table(SOURCE, shard, samples))
                ),
            ]
            files += [
                storage.write_bytes(f"{rel}{TABLE_SUFFIX[('sam', 'logits')]}/{key}", data)
                for key, data in sorted(logits_group_objects(np.stack(stored), precision).items())
            ]
            parts.append((name, files))
        _commit(
            storage,
            "sam",
            shard,
            tar=tar,
            n=images,
            parts=parts,
            rows={"prompts": images * prompts, "images": images},
            manifest=manifest,
        )
    return f"{root}/store"
