"""Transfer-set retrieval at scale: exact vs IVF/PQ over synthetic CLIP-like embeddings.

    python bench/retrieval.py [--vectors 1000000] [--dim 768] [--queries 1000] [--set rerank=4000 ...]

Gallery: `clustered_vectors` (pipeline/sample/synthetic_vectors.py: unit vectors around a few
hundred centroids, stored as fp16 like the store's embeddings; the generator the tests use). For
each index, side by side in one run: build time (training + adding), index memory (its serialized
size), queries/s per core (the search with its exact re-ranking, on all cores, divided by their
number), recall@10 against exact search. The exact index is the one `retrieval.index: flat` builds
(SQfp16: the fp16 values themselves); IVF/PQ is `pipeline.transfer.gallery_index.index_factory`'s
default at this size, candidates re-ranked with the fp16 vectors (here in memory; in a store they
are read from the part files).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from pipeline.config import RetrievalConfig  # noqa: E402
from pipeline.sample.synthetic_vectors import clustered_vectors, recall_at  # noqa: E402
from pipeline.transfer.gallery_index import index_factory, new_index, search, set_nprobe, vector_scores  # noqa: E402
from storage_schemas.plumbing.typed_config import add_set_argument, load_config  # noqa: E402


def measure(
    name: str,
    factory: str,
    gallery: np.ndarray,
    queries: np.ndarray,
    *,
    cfg: RetrievalConfig,
    k: int,
    truth: np.ndarray | None,
) -> dict:
    dim = gallery.shape[1]
    t0 = time.perf_counter()
    index = new_index(factory, dim)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        index.train(
            gallery[rng.choice(len(gallery), min(len(gallery), cfg.train_vectors), replace=False)].astype(np.float32)
        )
    train_s = time.perf_counter() - t0
    for a in range(0, len(gallery), 65536):
        index.add(gallery[a : a + 65536].astype(np.float32))
    build_s = time.perf_counter() - t0
    nprobe = set_nprobe(index, cfg.nprobe)
    t0 = time.perf_counter()
    _, rows = search(index, queries, k, cfg.rerank, vector_scores(lambda ids: gallery[ids]), cfg.query_batch)
    search_s = time.perf_counter() - t0
    return {
        "index": name,
        "factory": factory,
        "nprobe": nprobe,
        "train_s": train_s,
        "build_s": build_s,
        "bytes_per_vector": faiss.serialize_index(index).nbytes / len(gallery),
        "qps_per_core": len(queries) / search_s / faiss.omp_get_max_threads(),
        "rows": rows,
        "recall@10": recall_at(rows, truth) if truth is not None else 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_set_argument(p, "a retrieval: key for the IVF/PQ index (rerank=4000, pq_bytes=96, nprobe=512, ...)")
    args = p.parse_args()
    gallery, queries = clustered_vectors(args.vectors, args.dim, args.seed, queries=args.queries)
    cfg = load_config(RetrievalConfig, None, args.overrides)
    print(
        f"{args.vectors:,} vectors of D={args.dim} (fp16, {gallery.nbytes / 1e9:.2f} GB), {args.queries} queries, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    exact = measure(
        "flat",
        index_factory(RetrievalConfig(index="flat"), args.vectors, args.dim),
        gallery,
        queries,
        cfg=cfg,
        k=10,
        truth=None,
    )
    ivf = replace(cfg, index="ivfpq") if cfg.index == "auto" else cfg
    rows = [
        exact,
        measure(
            "ivfpq", index_factory(ivf, args.vectors, args.dim), gallery, queries, cfg=ivf, k=10, truth=exact["rows"]
        ),
    ]
    print(
        f"{'index':6} {'factory':22} {'nprobe':>6} {'train s':>8} {'build s':>8} {'B/vector':>9} "
        f"{'q/s/core':>9} {'recall@10':>9}"
    )
    for r in rows:
        print(
            f"{r['index']:6} {r['factory']:22} {str(r['nprobe'] or '-'):>6} {r['train_s']:8.1f} {r['build_s']:8.1f} "
            f"{r['bytes_per_vector']:9.1f} {r['qps_per_core']:9.1f} {r['recall@10']:9.3f}"
        )
    print(
        f"ivfpq / flat: memory {rows[1]['bytes_per_vector'] / rows[0]['bytes_per_vector']:.3f}, "
        f"queries/s {rows[1]['qps_per_core'] / rows[0]['qps_per_core']:.1f}x"
    )


if __name__ == "__main__":
    main()
