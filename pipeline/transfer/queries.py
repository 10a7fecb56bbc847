"""Query images embedded by the store's CLIP teacher on the job's Ray actors, cached in the store.

    queries = read_queries("pets/train")                   # class folders, a plain folder or shards
    table = query_embeddings(cfg, storage, must_match, queries)   # queries/NAME.parquet, made once

A query is rendered by the view-0 rule (`storage_schemas.pixels.views.canonical_crop`: the teacher's own
evaluation preprocessing) and embedded exactly as a gallery image's view 0 was, on the actors
(`QueryEmbedStage`, GPU where the cluster has one), in the store's compute dtype: an image of the
gallery used as a query gets its stored view-0 embedding back. An actor whose teacher differs from
the store's (fingerprint, weights included) stops the run; a query that does not decode is a row
with its reason, and the rest go on.

The cache (`queries/NAME.parquet`, NAME a hash of the query set's checksum, the store teacher's
must-match fields and the job's teacher config) has one row per query image, `query_id, key,
label, reason, detail, embedding` (null where it did not decode): a second run over the same
images, with other K or thresholds, embeds nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ClipTeacherConfig, JobConfig, ViewPolicy
from pipeline.materialize.clip_targets import ClipTeacherStage, RenderSpec
from storage_schemas.datasets.folders import encoded_images
from storage_schemas.plumbing.errors import ManifestMismatch
from storage_schemas.store import layout
from storage_schemas.store.manifest import teacher_difference
from storage_schemas.store.root import StoreRoot
from storage_schemas.store.tables import parquet_bytes

QUERY_SOURCE = "query"  # the identity queries are rendered under (view 0 draws no randomness)


@dataclass
class QuerySet:
    spec: str  # what was read: a folder or a shard pattern
    keys: list[str]
    labels: list[int | None]
    data: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def checksum(self) -> str:
        """sha256 over every image's key and bytes, in order: the query set's identity."""
        h = hashlib.sha256()
        for key, data in zip(self.keys, self.data):
            h.update(key.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()


def read_queries(spec: str, storage_options: dict[str, Any] | None = None) -> QuerySet:
    images = list(encoded_images(spec, storage_options))
    return QuerySet(spec, [i.key for i in images], [i.label for i in images], [i.data for i in images])


def query_table_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("query_id", pa.int32(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("label", pa.int32()),
            pa.field("reason", pa.string()),
            pa.field("detail", pa.string()),
            pa.field("embedding", pa.list_(pa.float16(), dim)),
        ]
    )


class QueryEmbedStage(ClipTeacherStage):
    """Ray actor UDF: query images (encoded bytes) -> view-0 embeddings, or the reason they failed."""

    def __init__(
        self, teacher_cfg: ClipTeacherConfig, storage: StoreRoot, compute_dtype: str, threads: int, max_pixels: int
    ):
        super().__init__(teacher_cfg, None, storage, compute_dtype, threads)
        self.spec = RenderSpec.of(self.teacher.fingerprint.preprocess, 0, 1, ViewPolicy(), max_pixels)
        self.teacher_json = json.dumps(self.teacher.fingerprint.must_match(), sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        rows = {**batch, "source": np.array([QUERY_SOURCE] * n), "shard": np.array([""] * n)}
        rendered, emb, failed = self.render_and_embed(rows)
        out = np.zeros((n, self.teacher.embed_dim), np.float16)
        out[sorted(rendered)] = emb[:, 0]
        return {
            "query_id": batch["query_id"],
            "embedding": out,
            "reason": np.array([failed.get(i, ("", ""))[0] for i in range(n)], dtype=object),
            "detail": np.array([failed.get(i, ("", ""))[1] for i in range(n)], dtype=object),
            "teacher": np.array([self.teacher_json] * n, dtype=object),
        }


def cache_name(checksum: str, teacher_must_match: dict, teacher_cfg: ClipTeacherConfig) -> str:
    """The store's teacher and the job's teacher config that embedded the set: a job naming another
    teacher misses the cache, and its actors' fingerprint check refuses it."""
    key = json.dumps([checksum, teacher_must_match, asdict(teacher_cfg)], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def embed_on_actors(cfg: JobConfig, must_match: dict, queries: QuerySet) -> dict[str, np.ndarray]:
    """The job's Ray (started or joined as `pipeline.materialize` does) runs the teacher actors."""
    import ray

    from pipeline.materialize.ray_session import start_ray

    has_gpu = start_ray(cfg)
    gpus = cfg.ray.gpus_per_actor if cfg.ray.gpus_per_actor is not None else (1 if has_gpu else 0)
    items = [{"query_id": i, "key": k, "image": d} for i, (k, d) in enumerate(zip(queries.keys, queries.data))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // cfg.ray.batch_size, 64)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            QueryEmbedStage,
            fn_constructor_kwargs={
                "teacher_cfg": cfg.clip.teacher,
                "storage": StoreRoot(cfg.store.url, cfg.store.storage_options),
                "compute_dtype": must_match["compute_dtype"],
                "threads": int(cfg.ray.cpus_per_actor),
                "max_pixels": cfg.max_image_pixels,
            },
            batch_size=cfg.ray.batch_size,
            batch_format="numpy",
            num_cpus=cfg.ray.cpus_per_actor,
            num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(
                size=min(cfg.ray.teacher_actors, max(1, len(items) // cfg.ray.batch_size))
            ),
        )
    rows = ds.take_all()
    for r in rows[:1]:
        mismatch = teacher_difference(must_match["teacher"], json.loads(r["teacher"]))
        if mismatch:
            raise ManifestMismatch(
                f"the job's CLIP teacher is not the store's ({mismatch}); queries must be embedded "
                "by the teacher the gallery was"
            )
    rows.sort(key=lambda r: r["query_id"])
    return {
        "embedding": np.stack([r["embedding"] for r in rows]) if rows else np.zeros((0, 1), np.float16),
        "reason": [r["reason"] or None for r in rows],
        "detail": [r["detail"] or None for r in rows],
    }


def query_embeddings(cfg: JobConfig, storage: StoreRoot, must_match: dict, queries: QuerySet, say=print) -> pa.Table:
    """The query set's cached embeddings table, embedding it first if the store has none."""
    rel = layout.query_path(cache_name(queries.checksum, must_match["teacher"], cfg.clip.teacher))
    if storage.exists(rel):
        say(f"{len(queries)} query images: embeddings cached at {rel}")
        return pq.read_table(io.BytesIO(storage.read_bytes(rel)))
    say(f"{len(queries)} query images: embedding them on the teacher actors")
    got = embed_on_actors(cfg, must_match, queries)
    dim = int(must_match["teacher"]["output"]["embed_dim"])
    emb = got["embedding"]
    table = pa.table(
        {
            "query_id": pa.array(np.arange(len(queries), dtype=np.int32)),
            "key": queries.keys,
            "label": pa.array(queries.labels, pa.int32()),
            "reason": pa.array(got["reason"], pa.string()),
            "detail": pa.array(got["detail"], pa.string()),
            "embedding": pa.array(
                [None if reason else e for e, reason in zip(emb, got["reason"])], pa.list_(pa.float16(), dim)
            ),
        },
        schema=query_table_schema(dim),
    )
    storage.write_bytes(rel, parquet_bytes(table))
    return table


def embeddings_array(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(query ids that decoded int32 [q], their embeddings float32 [q, D]) of a query table."""
    ok = table.filter(pc.is_null(table.column("reason")))
    emb = ok.column("embedding").combine_chunks()
    vectors = np.asarray(emb.values, np.float16).reshape(len(ok), emb.type.list_size)
    return ok.column("query_id").to_numpy(), vectors.astype(np.float32)
