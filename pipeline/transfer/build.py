"""`python -m pipeline.transfer_set CONFIG --query DATA --per-query K --name NAME [--held-out F] [--views 0]
[--min-similarity S] [--exclude DATA [--exclude-similarity T]] [--rebuild-index]`

A transfer set by query-balanced crop retrieval (Vemulapalli et al., ICML 2024): the query images
(a small target-task set: class folders, a plain folder or webdataset shards) are embedded by the
store's CLIP teacher on the job's Ray actors (cached in the store: another K embeds nothing), the
store's cached view embeddings are searched with faiss (`pipeline.transfer.gallery_index`: exact, or
IVF/PQ re-ranked with the stored embeddings, per `retrieval:` in CONFIG; kept under
`ROOT/indexes/`), and every query gets the same number of views (`pipeline.transfer.select`).
Samples of the held-out split at `--held-out` (the trainer's `data.held_out`, 0.01 by default) are
never selected; `--exclude` removes every gallery image with a view at cosine >= T to an image of
that set, so a student is not trained on its test images. T = 0.95 by default: the usual
near-duplicate threshold for CLIP image embeddings (re-encodes, resizes and small crops of one
photograph score above it); it is not measured here, where the teachers are random, so check it
for a real teacher on a few known duplicates.

Writes `subsets/NAME.parquet` (`storage_schemas.store.subsets`), `subsets/NAME.json` (query set checksum,
index, K, held-out fraction, teacher fingerprint, shortfalls) and `subsets/NAME.png`, a contact
sheet; a rerun that makes the stored selection again (same rows, same manifest but its time) keeps
it and writes nothing. Train on it with `--set data.clip.subset=NAME`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import JobConfig, load_job_config
from pipeline.transfer.contact_sheet import contact_sheet
from pipeline.transfer.gallery_index import Gallery, open_gallery
from pipeline.transfer.queries import QuerySet, embeddings_array, query_embeddings, read_queries
from pipeline.transfer.select import Selection, select_balanced
from storage_schemas.plumbing.console import format_table
from storage_schemas.plumbing.errors import ConfigError, StoreError, run_cli
from storage_schemas.plumbing.identity import SampleId, is_held_out
from storage_schemas.plumbing.typed_config import add_config_arguments
from storage_schemas.store import layout, open_store
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.subsets import SUBSET_SCHEMA, Subset, read_subset, write_subset

EXCLUDE_SIMILARITY = 0.95
FIRST_DEPTH = 4  # candidates searched per wanted view at first; x4 each time a query runs out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.transfer_set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p, "job config YAML: its store, clip.teacher, ray and retrieval sections are used")
    p.add_argument(
        "--query", required=True, metavar="DATA", help="query images: class folders, a folder, or .tar shards"
    )
    p.add_argument("--per-query", type=int, required=True, metavar="K", help="views selected per query image")
    p.add_argument("--name", required=True, help="writes subsets/NAME.parquet, .json and .png")
    p.add_argument(
        "--held-out",
        type=float,
        default=0.01,
        metavar="F",
        help="held-out fraction of the run that will train on it (never selected; default 0.01)",
    )
    p.add_argument(
        "--views",
        type=int,
        choices=[0],
        default=None,
        help="search only the canonical view 0 (default: every stored view, i.e. crops)",
    )
    p.add_argument("--min-similarity", type=float, default=None, metavar="S", help="select no view below cosine S")
    p.add_argument(
        "--exclude", default=None, metavar="DATA", help="an evaluation set whose near-duplicates are removed"
    )
    p.add_argument(
        "--exclude-similarity",
        type=float,
        default=EXCLUDE_SIMILARITY,
        metavar="T",
        help=f"cosine at which a gallery image is a near-duplicate (default {EXCLUDE_SIMILARITY})",
    )
    p.add_argument("--rebuild-index", action="store_true", help="build the index again (a stale one is refused)")
    args = p.parse_args(argv)
    if args.per_query < 1:
        raise ConfigError(f"--per-query: expected at least 1, got {args.per_query}")
    if not 0.0 < args.held_out < 1.0:
        raise ConfigError(f"--held-out: expected a fraction in (0, 1), got {args.held_out}")
    try:
        layout.check_name("subset", args.name)
    except ValueError as e:
        raise ConfigError(f"--name: {e}") from None
    return args


def embedded(cfg: JobConfig, store, must_match: dict, spec: str, what: str) -> tuple[QuerySet, np.ndarray, np.ndarray]:
    """Read and embed (or find cached) an image set: (set, ids that decoded, float32 [q, D])."""
    images = read_queries(spec, cfg.store.storage_options)
    if not len(images):
        raise ConfigError(f"{what} '{spec}': no images found")
    table = query_embeddings(cfg, store.storage, must_match, images)
    for row in table.filter(pc.is_valid(table.column("reason"))).to_pylist():
        print(f"  {what} {row['key']}: skipped, {row['reason']} ({row['detail']})")
    ids, vectors = embeddings_array(table)
    return images, ids, vectors


def excluded_images(gallery: Gallery, vectors: np.ndarray, threshold: float, cfg: JobConfig) -> set[SampleId]:
    """Gallery images with an indexed view at cosine >= threshold to any of `vectors`, searched
    deeper until every list ends below it (or ends: an IVF index's probed lists bound it)."""
    depth = 16
    while True:
        sims, rows = gallery.search(vectors, min(depth, gallery.index.ntotal), cfg.retrieval)
        if depth >= gallery.index.ntotal or not (sims[:, -1] >= threshold).any():
            break
        depth *= 4
    hits = np.unique(rows[(sims >= threshold) & (rows >= 0)])
    found = gallery.describe(hits).to_pylist() if len(hits) else []
    return {SampleId(r["source"], r["shard"], r["key"]) for r in found}


def select(
    gallery: Gallery, vectors: np.ndarray, args: argparse.Namespace, excluded: set[SampleId], cfg: JobConfig
) -> tuple[Selection, pa.Table]:
    """Query-balanced selection over candidate lists made deeper until no query runs out."""
    depth = FIRST_DEPTH * args.per_query
    while True:
        n = min(depth, gallery.index.ntotal)
        sims, rows = gallery.search(vectors, n, cfg.retrieval)
        ids = np.unique(rows[rows >= 0])
        found = gallery.describe(ids)
        samples = [SampleId(*v) for v in zip(*(found.column(c).to_pylist() for c in ("source", "shard", "key")))]
        # Per sample, not per view: a sample's K views share its split.
        ok = {s: not is_held_out(s, args.held_out) and s not in excluded for s in set(samples)}
        usable = np.array([ok[s] for s in samples], bool)
        r = gallery.rows[ids]
        image = r["unit"].astype(np.int64) << 32 | r["sample_index"].astype(np.int64)
        at = np.searchsorted(ids, np.maximum(rows, 0))
        chosen = select_balanced(
            sims,
            rows,
            np.where(rows >= 0, image[at] if len(ids) else 0, -1),
            (rows >= 0) & (usable[at] if len(ids) else False),
            args.per_query,
            args.min_similarity,
        )
        if not chosen.needs_more.any() or n >= gallery.index.ntotal:
            return chosen, found
        depth *= 4


def subset_table(chosen: Selection, found: pa.Table, query_ids: np.ndarray) -> pa.Table:
    at = np.searchsorted(found.column("row").to_numpy(), chosen.row)
    meta = found.take(pa.array(at))
    return pa.table(
        {
            "source": meta.column("source"),
            "shard": meta.column("shard"),
            "unit": meta.column("unit"),
            "key": meta.column("key"),
            "sample_index": meta.column("sample_index"),
            "view": meta.column("view"),
            "query_id": pa.array(query_ids[chosen.query].astype(np.int32)),
            "similarity": pa.array(chosen.similarity),
            "rank": pa.array(chosen.rank),
        }
    )


def _timeless(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created_at"}


def same_stored_selection(storage: StoreRoot, name: str, table: pa.Table, manifest: dict) -> str | None:
    """When subset `name` is stored with these rows and this manifest (but its time), its `created_at`:
    a rerun keeps it, so trainers that read it see no rewrite."""
    if not all(storage.exists(layout.subset_path(name, ext)) for ext in (".parquet", ".json", ".png")):
        return None
    stored = read_subset(storage, name)
    # Through JSON, as write_subset stores it, so tuples compare equal to the stored lists.
    same = _timeless(stored.manifest) == _timeless(json.loads(json.dumps(manifest)))
    same = same and stored.table.equals(Subset(name, table.cast(SUBSET_SCHEMA), manifest).table)  # as stored: sorted
    return stored.manifest["created_at"] if same else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    store = open_store(cfg.store.url, cfg.store.storage_options)
    manifest = store.manifest("clip")
    if manifest is None:
        raise StoreError(f"store {store.url} has no CLIP targets to retrieve from")
    must = manifest.must_match
    queries, query_ids, vectors = embedded(cfg, store, must, args.query, "query")
    if not len(query_ids):
        raise ConfigError(f"--query '{args.query}': none of its {len(queries)} images decodes")
    gallery = open_gallery(store, cfg.retrieval, views0=args.views == 0, rebuild=args.rebuild_index)
    excluded: set[SampleId] = set()
    exclude_info = None
    if args.exclude:
        ex_set, _, ex_vectors = embedded(cfg, store, must, args.exclude, "exclude")
        if not len(ex_vectors):  # excluding nothing silently would leak the images it names
            raise ConfigError(f"--exclude '{args.exclude}': none of its {len(ex_set)} images decodes")
        excluded = excluded_images(gallery, ex_vectors, args.exclude_similarity, cfg)
        exclude_info = {
            "spec": args.exclude,
            "checksum": ex_set.checksum,
            "images": len(ex_set),
            "similarity": args.exclude_similarity,
            "gallery_images_removed": len(excluded),
        }
    chosen, found = select(gallery, vectors, args, excluded, cfg)
    table = subset_table(chosen, found, query_ids)
    short = {queries.keys[q]: int(n) for q, n in zip(query_ids, chosen.short) if n}
    failed = [queries.keys[i] for i in sorted(set(range(len(queries))) - set(query_ids.tolist()))]
    teacher = must["teacher"]
    subset_manifest = {
        "name": args.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "query": {
            "spec": args.query,
            "checksum": queries.checksum,
            "images": len(queries),
            "embedded": len(query_ids),
            "failed": failed,
        },
        "per_query": args.per_query,
        "held_out": args.held_out,
        "min_similarity": args.min_similarity,
        "views": gallery.meta["views"],
        "exclude": exclude_info,
        "index": {
            "name": gallery.name,
            "factory": gallery.meta["factory"],
            "vectors": gallery.meta["vectors"],
            "units": len(gallery.units),
            "nprobe": cfg.retrieval.nprobe,
            "rerank": cfg.retrieval.rerank,
        },
        "teacher": {"arch": teacher["arch"], "weights_sha256": teacher["weights_sha256"]},
        "rows": table.num_rows,
        "samples": len(set(zip(*(table.column(c).to_pylist() for c in ("source", "shard", "key"))))),
        "short": short,
    }
    kept = same_stored_selection(store.storage, args.name, table, subset_manifest)
    if kept:
        print(f"subset {args.name}: the stored one (made {kept}) is this selection; kept")
        return 0
    write_subset(store.storage, args.name, table, subset_manifest)
    store.storage.write_bytes(
        layout.subset_path(args.name, ".png"),
        contact_sheet(store, queries, table, storage_options=cfg.store.storage_options),
    )
    sims = table.column("similarity").to_numpy()
    print(
        format_table(
            ["subset", "queries", "views", "samples", "short", "similarity min/median"],
            [
                [
                    args.name,
                    f"{len(query_ids)}/{len(queries)}",
                    str(table.num_rows),
                    str(subset_manifest["samples"]),
                    str(sum(short.values())),
                    f"{sims.min():.3f} / {np.median(sims):.3f}" if len(sims) else "-",
                ]
            ],
        )
    )
    for key, n in list(short.items())[:10]:
        print(f"  query {key}: {n} of {args.per_query} views short (min similarity or gallery too small)")
    print(f"wrote {store.storage.url_of(layout.subset_path(args.name))} (+ .json, contact sheet .png)")
    return 0


if __name__ == "__main__":
    run_cli(main)
