"""CLIP pipeline throughput against the bare teacher forward, and bytes per stored view.

    python bench/clip_pipeline.py [--arch ViT-B-16] [--views 2] [--samples 100] [--batch 16] [--runs 3]

pipeline: `python -m pipeline.materialize` in this process on a local Ray with 2 CPUs (read tasks,
          one teacher actor with 1 torch thread that decodes and renders on 1 thread of its own),
          over the sample corpus, --runs times into fresh stores; views/s over the steady window:
          from the first part file written to the last (the store's mtimes), the first part's
          views left out, so start-up is apart; median of the runs.
bare:     the same teacher (random init, same seed), the same batches of uint8 views already in
          memory, through the same normalise + encode code, 1 torch thread.
bytes:    stored bytes per view: Parquet of the bench store (D of --arch), and of a synthetic
          D=768 table (ViT-L/14) built by the pipeline's own table code; the fp16 floor is 2 x D.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.compare import print_pipeline_vs_bare, run_jobs
from pipeline.config import ClipTeacherConfig
from pipeline.materialize.clip_targets import ClipTeacherStage
from pipeline.sample.corpus import build_sample_corpus
from storage_schemas.pixels.decode import decode_image, draft_side_for
from storage_schemas.pixels.views import render_view
from storage_schemas.store import open_store
from storage_schemas.store.clip_views import ClipViews, views_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100, help="first N samples of the corpus (25 per shard)")
    parser.add_argument("--batch", type=int, default=16, help="samples per teacher batch")
    parser.add_argument("--runs", type=int, default=3, help="job runs; the median is printed")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-clip-")
    build_sample_corpus(f"{work}/corpus")
    n_shards = max(1, min(4, args.samples // 25))
    job = {
        "store": {"url": f"{work}/store"},
        "sources": [
            {"name": "bench", "kind": "clip", "shards": f"{work}/corpus/clip/{{00000..{n_shards - 1:05d}}}.tar"}
        ],
        "clip": {"teacher": {"arch": args.arch, "pretrained": None, "init_seed": 0}, "views": args.views},
        "ray": {"num_cpus": 2, "teacher_actors": 1, "cpus_per_actor": 1, "batch_size": args.batch},
    }
    reports, steady = run_jobs(work, job, args.runs, "clip", "views")

    store = open_store(f"{work}/store")
    rows = store.read_table("clip", "views").to_pylist()
    images = {}
    for shard in range(n_shards):
        with tarfile.open(f"{work}/corpus/clip/{shard:05d}.tar") as tar:
            images |= {
                (f"{shard:05d}", m.name[:-4]): tar.extractfile(m).read()
                for m in tar.getmembers()
                if m.name.endswith(".jpg")
            }
    decoded = {k: decode_image(v, draft_side=draft_side_for(224)).image for k, v in images.items()}
    pixels = np.stack([render_view(decoded[(r["shard"], r["key"])], r["crop"], r["flip"], 224) for r in rows])
    stage = ClipTeacherStage(
        ClipTeacherConfig(arch=args.arch, pretrained=None, init_seed=0), None, store.storage, "fp32", threads=1
    )
    per_batch = args.batch * args.views
    stage.embed(pixels[:per_batch])  # warm-up, as the actor's first batch is in the pipeline figure
    t0 = time.perf_counter()
    for i in range(0, len(pixels), per_batch):
        stage.embed(pixels[i : i + per_batch])
    bare_rate = len(pixels) / (time.perf_counter() - t0)

    d = store.manifest("clip").must_match["teacher"]["output"]["embed_dim"]
    store_bytes = sum(f.size for c in store.commits("clip") for f in c.files if f.path.startswith("clip/"))
    first = store.commits("clip")[0]  # sample indexes are per unit: one unit's table at a time
    views = ClipViews.from_table(store.read_unit_table(first, "views"))
    rng = np.random.default_rng(0)
    synth = rng.normal(size=(*views.embeddings.shape[:2], 768))
    views.embeddings = (synth / np.linalg.norm(synth, axis=-1, keepdims=True)).astype(np.float16)
    synth_bytes = len(views_parquet(views, "bench", first.shard))

    print(
        f"teacher {args.arch} (random init), K={args.views}, {len(rows)} views, batch {args.batch} samples "
        f"({per_batch} views), 1 torch thread, local Ray with 2 CPUs"
    )
    print_pipeline_vs_bare(reports, steady, "views", bare_rate)
    print(
        f"  bytes per view     {store_bytes / len(rows):8.1f} at D={d} (fp16 floor {2 * d}); "
        f"{synth_bytes / (first.n_stored * args.views):.1f} at D=768 (floor 1536)"
    )


if __name__ == "__main__":
    main()
