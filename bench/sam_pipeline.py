"""SAM side: pipeline throughput against the bare teacher, and bytes per image per storage option.

    python bench/sam_pipeline.py [--model vit_b] [--images 4] [--prompts 32]

pipeline: `python -m pipeline.materialize` in this process on a local Ray with 2 CPUs (one read
          task, one teacher actor with 1 torch thread) over the first N SA-1B sample images;
          images/s from the job's own report (actor start-up included).
bare:     the same SAM (random init, same seed), inputs already in memory, the same per-image
          code (encoder once, decoder per prompt structure), 1 torch thread.
bytes:    one image's encoded Zarr chunk (zstd 3) per precision at P=32 and P=64 (single mask),
          and the largest probability error of uint8_sigmoid against fp32. The weights are random:
          real SAM logits saturate far from objects and compress much better than these.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch
import yaml

from bench.compare import print_pipeline_vs_bare
from pipeline.config import SamConfig, SamTeacherConfig
from pipeline.materialize import main as materialize
from pipeline.sam_targets import PromptSpec, SamTeacherStage, blank_sam_row, prepare_image
from pipeline.sample_data import CorpusSpec, build_sample_corpus
from pipeline.units import OK, ShardTask
from storage_schemas.mask_logits import decode_logits, encode_logits, logits_group_objects
from storage_schemas.storage import Storage
from storage_schemas.tar_samples import iter_tar_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-sam-")
    build_sample_corpus(f"{work}/corpus", CorpusSpec(clip_shards=0, sam_shards=1, sam_per_shard=args.images))
    shard = f"{work}/corpus/sam/sa_000000.tar"
    job = {
        "store": {"url": f"{work}/store"},
        "sources": [{"name": "bench", "kind": "sam", "shards": shard}],
        "sam": {"teacher": {"model": args.model, "checkpoint": None}, "prompts": args.prompts},
        "ray": {"num_cpus": 2, "teacher_actors": 1, "cpus_per_actor": 1, "sam_batch_size": 1},
    }
    with open(f"{work}/job.yaml", "w") as f:
        yaml.safe_dump(job, f)
    assert materialize([f"{work}/job.yaml", "--report", f"{work}/report.json"]) == 0
    report = json.loads(open(f"{work}/report.json").read())["reports"][0]

    sam_cfg = SamConfig(teacher=SamTeacherConfig(model=args.model), prompts=64)
    spec = PromptSpec(seed=0, sam=sam_cfg, max_pixels=10**9)
    task = ShardTask("bench", "sa_000000", shard, "{}", 0, [])
    rows = [prepare_image(dict(blank_sam_row(task, spec, OK, 0), key=s.key, sample_index=s.index), spec, s)
            for s in iter_tar_samples(shard)]
    stage = SamTeacherStage(sam_cfg.teacher, SamConfig(teacher=sam_cfg.teacher, prompts=args.prompts), Storage(work),
                            "fp32", threads=1)
    keys = ("image", "input_hw", "original_hw", "structure", "boxes", "points", "labels")
    t0 = time.perf_counter()
    for r in rows:
        stage.predict_image(*(r[k] if k in ("image", "input_hw", "original_hw") else r[k][: args.prompts] for k in keys),
                            min(args.prompts, r["n_prompts"]))
    bare_rate = len(rows) / (time.perf_counter() - t0)

    full = SamTeacherStage(sam_cfg.teacher, sam_cfg, Storage(work), "fp32", threads=torch.get_num_threads())
    sizes = {(p, prec): [] for p in (32, 64) for prec in ("fp16", "uint8_sigmoid")}
    worst = 0.0
    for r in rows:
        logits, _ = full.predict_image(*(r[k] for k in keys), r["n_prompts"])
        logits = np.nan_to_num(logits)
        for (p, prec), out in sizes.items():
            objects = logits_group_objects(encode_logits(logits[None, :p], prec), prec)
            out.append(sum(len(v) for k, v in objects.items() if "/c/" in k))
        q = decode_logits(encode_logits(logits, "uint8_sigmoid"), "uint8_sigmoid")
        sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
        worst = max(worst, float(np.abs(sig(q) - sig(logits)).max()))

    print(f"SAM {args.model} (random init), {len(rows)} images, P={args.prompts}, 1 torch thread, local Ray with 2 CPUs")
    print_pipeline_vs_bare(report, "images", bare_rate, first_rows=1)
    for (p, prec), out in sizes.items():
        raw = p * 256 * 256 * (2 if prec == "fp16" else 1)
        print(f"  bytes/image P={p:<3} {prec:<14} {np.mean(out) / 1024:9.1f} KiB (raw {raw / 1024:.0f} KiB)")
    print(f"  uint8_sigmoid max probability error {worst:.5f} (documented bound {0.5 / 255:.5f})")


if __name__ == "__main__":
    main()
