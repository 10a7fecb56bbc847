"""SAM side: the teacher stage against the bare teacher, objects per image, and bytes per image.

    python bench/sam_pipeline.py [--model vit_b] [--images 8] [--prompts 32] [--runs 3]

pipeline: `python -m pipeline.materialize` in this process on a local Ray with 2 CPUs (read
          tasks, one teacher actor with 1 torch thread that decodes on 1 thread of its own) over
          the first N SA-1B sample images, --runs times into fresh stores, one image a part;
          images/s over the steady window: from the first part file written to the last (the
          store's mtimes), the first part's image left out; median of the runs.
stage:    `SamTeacherStage.__call__` in this process (no Ray) on the read stage's own rows, one
          image a batch, writing its parts to a local store: decode and prompt sampling on the
          actor's pool, the teacher, quantisation on the device, Zarr encoding and the writes.
bare:     the same SAM (random init, same seed), inputs already decoded and in memory, the same
          per-image code (encoder once, decoder per prompt structure), 1 torch thread.
objects:  files the job wrote per stored image (parts' Parquet tables and Zarr objects).
bytes:    one image's encoded logits (zstd 3 in the part's Zarr shard) per precision at P=32 and
          P=64 (single mask), on the random teacher's logits and on SAM-like ones: per prompt,
          2 x the signed distance (256 px grid) to one of the image's SA-1B masks, clamped at
          +-30 as SAM's logits saturate far from objects, plus N(0, 0.5) noise. Also the largest
          probability error of uint8_sigmoid against fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt

from bench.compare import print_pipeline_vs_bare, run_jobs
from pipeline.config import SamConfig, SamTeacherConfig
from pipeline.materialize.sam_prompts import parse_sa1b_json, usable_annotations
from pipeline.materialize.sam_targets import PromptSpec, SamTeacherStage, predict_inputs, prepare_image, read_sam_shard
from pipeline.materialize.sources import InputShard
from pipeline.materialize.units import OK, shard_task
from pipeline.sample.corpus import CorpusSpec, build_sample_corpus
from storage_schemas.pixels.tar_samples import iter_tar_samples
from storage_schemas.plumbing.identity import SampleId
from storage_schemas.store import open_store
from storage_schemas.store.mask_logits import LOW_RES, decode_logits, encode_logits, logits_group_objects
from storage_schemas.store.root import StoreRoot


def sam_like_logits(annotation: bytes, slots: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [slots, 1, 256, 256]: clamped signed distances to the image's masks, plus noise."""
    info, anns = parse_sa1b_json(annotation)
    usable, _ = usable_annotations(anns, int(info["height"]), int(info["width"]))
    out = np.empty((slots, 1, LOW_RES, LOW_RES), np.float32)
    for s in range(slots):
        mask = mask_utils.decode(usable[s % len(usable)][1])
        small = np.asarray(Image.fromarray(mask * 255).resize((LOW_RES, LOW_RES), Image.Resampling.NEAREST)) > 0
        signed = distance_transform_edt(small) - distance_transform_edt(~small)
        out[s, 0] = np.clip(2.0 * signed, -30, 30) + rng.normal(0, 0.5, signed.shape)
    return out


def chunk_bytes(logits: np.ndarray, precision: str) -> int:
    objects = logits_group_objects(encode_logits(logits[None], precision), precision)
    return sum(len(v) for k, v in objects.items() if k.startswith("logits/c"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="job runs; the median is printed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="bench-sam-")
    build_sample_corpus(f"{work}/corpus", CorpusSpec(clip_shards=0, sam_shards=1, sam_per_shard=args.images))
    shard = f"{work}/corpus/sam/sa_000000.tar"
    job = {
        "store": {"url": f"{work}/store"},
        "compute_dtype": "fp32",
        "sources": [{"name": "bench", "kind": "sam", "shards": shard, "unit_size": 0}],
        "sam": {"teacher": {"model": args.model, "checkpoint": None}, "prompts": args.prompts},
        "ray": {"num_cpus": 2, "teacher_actors": 1, "cpus_per_actor": 1, "sam_batch_size": 1},
    }
    reports, steady = run_jobs(work, job, args.runs, "sam", "images")
    commits = open_store(f"{work}/store").commits("sam")
    objects = sum(len(c.files) for c in commits) / sum(c.n_stored for c in commits)

    cfg = SamConfig(teacher=SamTeacherConfig(model=args.model), prompts=args.prompts)
    spec = PromptSpec(seed=0, sam=cfg, max_pixels=10**9)
    stage = SamTeacherStage(spec, StoreRoot(f"{work}/stage"), "fp32", threads=1)
    task = shard_task(
        InputShard("bench", "sam", shard, "sa_000000", os.path.getsize(shard), None, {}, None),
        [],
        stage.storage,
        write_index=False,
    )
    rows = [r for r in read_sam_shard(task) if r["status"] == OK]
    batches = [{c: np.array([r[c]], dtype=object if isinstance(r[c], (bytes, str)) else None) for c in r} for r in rows]
    stage(batches[0])  # warm-up, as the actor's first batch is behind the pipeline's first target
    t0 = time.perf_counter()
    for b in batches:
        stage(b)
    stage_rate = len(batches) / (time.perf_counter() - t0)

    prepared = [
        prepare_image(spec, SampleId("bench", "sa_000000", r["key"]), r["image"], r["annotation"]) for r in rows
    ]
    stage.predict_image(prepared[0]["image"], **predict_inputs(prepared[0]))
    t0 = time.perf_counter()
    for p in prepared:
        stage.predict_image(p["image"], **predict_inputs(p))
    bare_rate = len(prepared) / (time.perf_counter() - t0)

    full = SamTeacherStage(
        PromptSpec(0, SamConfig(teacher=cfg.teacher, prompts=64), 10**9),
        StoreRoot(work),
        "fp32",
        threads=torch.get_num_threads(),
    )
    rng = np.random.default_rng(0)
    sizes = {
        (kind, p, prec): [] for kind in ("random", "sam-like") for p in (32, 64) for prec in ("fp16", "uint8_sigmoid")
    }
    worst = 0.0
    for sample in iter_tar_samples(shard):
        p = prepare_image(
            full.spec, SampleId("bench", "sa_000000", sample.key), sample.image()[1], sample.members["json"]
        )
        random_logits = np.nan_to_num(full.predict_image(p["image"], **predict_inputs(p))[0])
        like = sam_like_logits(sample.members["json"], 64, rng)
        for (kind, n, prec), out in sizes.items():
            out.append(chunk_bytes((random_logits if kind == "random" else like)[:n], prec))
        for logits in (random_logits, like):
            q = decode_logits(encode_logits(logits, "uint8_sigmoid"), "uint8_sigmoid")
            sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))  # noqa: E731
            worst = max(worst, float(np.abs(sig(q) - sig(logits)).max()))

    print(
        f"SAM {args.model} (random init), {len(rows)} images, P={args.prompts}, 1 torch thread, local Ray with 2 CPUs"
    )
    print_pipeline_vs_bare(reports, steady, "images", bare_rate)
    print(f"  teacher stage, no Ray          {stage_rate:8.3f} images/s, {stage_rate / bare_rate:.3f} of bare")
    print(f"  objects written per image      {objects:8.2f}  ({len(commits)} units; one Zarr shard per part)")
    for (kind, p, prec), out in sizes.items():
        raw = p * 256 * 256 * (2 if prec == "fp16" else 1)
        print(
            f"  bytes/image {kind:<8} P={p:<3} {prec:<14} {statistics.mean(out) / 1024:9.1f} KiB "
            f"(raw {raw / 1024:.0f} KiB)"
        )
    print(f"  uint8_sigmoid max probability error {worst:.5f} (documented bound {0.5 / 255:.5f})")


if __name__ == "__main__":
    main()
