"""A faiss index over a store's CLIP view embeddings: built by streaming committed units, kept under
`ROOT/indexes/NAME/` with the units it covers, searched with exact re-ranking.

    gallery = open_gallery(store, cfg.retrieval, views0=False)   # loaded, extended or built
    sims, rows = gallery.search(queries, n)    # float32 / int64 [q, n], best first; row -1: none
    found = gallery.describe(np.unique(rows))  # the views behind rows: source, shard, unit, key, ...

Every stored view is a crop of its image, so searching all views is crop retrieval (`views0`
restricts the index to the canonical view 0). Two index types, both faiss's `index_factory`:
- flat (`SQfp16`): exact inner product over the stored fp16 values, which it holds losslessly
  (2 x D bytes a vector: 614 GB for 400M views at D = 768, so a store's worth only at sample scale);
- ivfpq (`IVF{lists},PQ{m}x4fs`): inverted lists over 4-bit fast-scan PQ codes (`pq_bytes` a
  vector), its quantizers trained on whole units drawn by a seeded hash; `nprobe` lists searched.
Either way the `rerank` best candidates of the index are scored again exactly (flat: from the
index's own vectors; ivfpq: the stored fp16 embeddings, read from the candidates' part files) and
ordered by (similarity descending, row ascending), so ties break the same way everywhere.

Files, `index.json` written last (a reader that finds it finds the rest):
    indexes/NAME/index.faiss    faiss.serialize_index
    indexes/NAME/rows.parquet   one row per vector: unit (into index.json's units), part, row (in the
                                part's table as `part_views` reads it), sample_index, view
    indexes/NAME/index.json     factory, dim, vectors, views, units [{source, shard, unit, attempt_id, parts}]
NAME says what the index holds (`allviews-SQfp16`, `view0-IVF1024_PQ128x4fs`); index.json
records the settings that built it (`build`), and the same settings find it again even where the
store has grown enough for auto-sized lists to differ. A unit the index covers that is no longer
committed as the attempt it read (a job redid it) makes the index stale: refused,
`--rebuild-index` makes it again. Units committed since it was built are added to it, without
retraining. `validate --gc` never touches `indexes/`. Saving and loading hold the index two to
three times over (faiss's serialized bytes, then the upload or the parsed index).
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.config import RetrievalConfig
from storage_schemas.plumbing.errors import ConfigError, StoreError
from storage_schemas.plumbing.identity import stable_hash64
from storage_schemas.store import TargetStore, layout, table_files
from storage_schemas.store.clip_views import read_view
from storage_schemas.store.commit import CommitRecord

ROW_FIELDS = [("unit", np.int32), ("part", np.int32), ("row", np.int32), ("sample_index", np.int32), ("view", np.int16)]
FLAT_MARGIN = 8  # extra exact candidates of a flat index, so the k-th place's ties break by row


def index_factory(cfg: RetrievalConfig, vectors: int, dim: int) -> str:
    """The faiss factory string `cfg.index` resolves to for `vectors` of `dim`."""
    kind = cfg.index
    if kind == "auto":
        kind = "flat" if vectors * dim * 2 <= cfg.flat_max_gb * 1e9 else "ivfpq"
    if kind == "flat":
        return "SQfp16"
    if kind != "ivfpq":
        return kind
    lists = cfg.ivf_lists or max(1, min(2 ** round(math.log2(4 * math.sqrt(max(vectors, 1)))), vectors // 39))
    m = min(2 * cfg.pq_bytes, dim)
    while dim % m or m % 2:  # sub-quantizers split D evenly; fast-scan codes pair them
        m -= 1
    if m < 2:
        raise ConfigError(f"retrieval.pq_bytes: no even number of sub-quantizers <= {2 * cfg.pq_bytes} divides D={dim}")
    return f"IVF{lists},PQ{m}x4fs"


def new_index(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(
            f"retrieval.index: faiss cannot build {factory!r} at D={dim} ({str(e).strip().splitlines()[-1]})"
        ) from None


def set_nprobe(index: faiss.Index, nprobe: int | None) -> int | None:
    """Lists an IVF index searches (null: a sixteenth of them); None for an index without lists."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    ivf.nprobe = nprobe or max(1, ivf.nlist // 16)
    return ivf.nprobe


def is_exact(index: faiss.Index) -> bool:
    """Whether the index scores the stored fp16 values exactly (and can give them back)."""
    if isinstance(index, faiss.IndexFlat):
        return True
    return isinstance(index, faiss.IndexScalarQuantizer) and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16


Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (queries [q, D], rows [q, c]) -> exact sims [q, c]


def vector_scores(vectors: Callable[[np.ndarray], np.ndarray], chunk: int = 64) -> Score:
    """Exact scores from `vectors(ids)` (sorted unique rows -> float16/32 [n, D]) of vectors in
    memory, `chunk` queries' candidates at a time (all of a 1000-query search at c = 1000 would be
    GBs of float32)."""

    def score(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.zeros(rows.shape, np.float32)
        for a in range(0, len(rows), chunk):
            r = rows[a : a + chunk]
            ids = np.unique(r[r >= 0])
            if len(ids):
                table = np.asarray(vectors(ids), np.float32)
                at = np.searchsorted(ids, np.maximum(r, 0))
                out[a : a + chunk] = np.einsum("qcd,qd->qc", table[at], queries[a : a + chunk])
        return out

    return score


def best_k(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of candidates `rows` [q, c] (-1: none) by (similarity descending, row ascending)
    -> sims float32 [q, k] (NaN where none), rows int64 [q, k] (-1)."""
    sims = np.where(rows >= 0, sims, -np.inf).astype(np.float32)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -sims), axis=1)[:, :k]
    best_rows = np.take_along_axis(rows, order, 1)
    best = np.take_along_axis(sims, order, 1)
    pad = ((0, 0), (0, k - best_rows.shape[1]))
    return (
        np.pad(np.where(best_rows >= 0, best, np.nan), pad, constant_values=np.nan).astype(np.float32),
        np.pad(best_rows, pad, constant_values=-1),
    )


def search(
    index: faiss.Index, queries: np.ndarray, n: int, rerank: int, score: Score, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The n best rows per query: faiss's max(n, rerank) candidates (n + FLAT_MARGIN for an exact
    index), `batch` queries at a time, then all of them scored exactly in one `score` call (a
    store's part files are read once, not once per batch) -> sims float32 [q, n], rows int64 [q, n]."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = min(index.ntotal, n + FLAT_MARGIN if is_exact(index) else max(n, rerank))
    if depth == 0 or not len(queries):
        return np.full((len(queries), n), np.nan, np.float32), np.full((len(queries), n), -1, np.int64)
    rows = np.concatenate([index.search(queries[a : a + batch], depth)[1] for a in range(0, len(queries), batch)])
    rows = rows.astype(np.int64)
    return best_k(score(queries, rows), rows, n)


PART_COLUMNS = ["sample_index", "key", "view", "embedding"]


def part_views(store: TargetStore, rel: str, views0: bool, columns: list[str] = PART_COLUMNS) -> pa.Table:
    """A views part's rows as the index numbers them (view 0 only with views0), read in one request
    (the store's retried read), only `columns` decoded."""
    data = pa.BufferReader(store.storage.read_bytes(rel))
    return read_view(data, 0).select(columns) if views0 else pq.read_table(data, columns=columns)


def embeddings_of(table: pa.Table) -> np.ndarray:
    emb = table.column("embedding").combine_chunks()
    return np.asarray(emb.values, np.float16).reshape(-1, emb.type.list_size)


def unit_entry(record: CommitRecord) -> dict:
    return {
        "source": record.source,
        "shard": record.shard,
        "unit": record.unit,
        "attempt_id": record.attempt_id,
        "parts": [p for p in table_files(record, "views") if record.file(p) is not None],
    }


def by_part(rows: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(unit, part, positions into `rows`) for each part file that rows [n] of ROW_FIELDS fall in."""
    part = rows["unit"].astype(np.int64) << 32 | rows["part"].astype(np.int64)
    order = np.argsort(part, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(part[order])) + 1) if len(order) else []:
        yield int(rows["unit"][group[0]]), int(rows["part"][group[0]]), group


@dataclass
class Gallery:
    store: TargetStore
    name: str
    index: faiss.Index
    rows: np.ndarray  # structured [n] of ROW_FIELDS
    meta: dict  # index.json
    keys: dict[int, str] = field(default_factory=dict)  # sample keys of rows a search read, by row

    @property
    def units(self) -> list[dict]:
        return self.meta["units"]

    def _part(self, u: int, p: int, columns: list[str] = PART_COLUMNS) -> pa.Table:
        return part_views(self.store, self.units[u]["parts"][p], self.meta["views"] == [0], columns)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact similarities of candidates `rows` [q, c]: from the index when it holds the fp16
        values exactly, else from the stored embeddings, each part file holding a candidate read
        once (their keys kept for `describe`)."""
        if is_exact(self.index):
            return vector_scores(lambda ids: self.index.reconstruct_batch(ids))(queries, rows)
        sims = np.zeros(rows.shape, np.float32)
        q_of, c_of = np.nonzero(rows >= 0)
        ids = rows[q_of, c_of]
        for u, p, group in by_part(self.rows[ids]):
            t = self._part(u, p)
            at = self.rows["row"][ids[group]]
            vec = embeddings_of(t)[at].astype(np.float32)
            sims[q_of[group], c_of[group]] = np.einsum("nd,nd->n", vec, queries[q_of[group]])
            self.keys.update(zip(ids[group].tolist(), t.column("key").take(pa.array(at)).to_pylist()))
        return sims

    def search(self, queries: np.ndarray, n: int, cfg: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        set_nprobe(self.index, cfg.nprobe)
        return search(self.index, queries, n, cfg.rerank, self.score, cfg.query_batch)

    def describe(self, ids: np.ndarray) -> pa.Table:
        """source, shard, unit, key, sample_index, view (and `row`) of index rows `ids`; keys a
        search already read are not read again, the others from their parts' key column."""
        ids = np.asarray(ids, np.int64)
        r = self.rows[ids]
        missing = np.array([i not in self.keys for i in ids.tolist()], bool)
        for u, p, group in by_part(r[missing]):
            t = self._part(u, p, ["key"])
            at = r["row"][missing][group]
            self.keys.update(zip(ids[missing][group].tolist(), t.column("key").take(pa.array(at)).to_pylist()))
        units = self.units
        return pa.table(
            {
                "row": pa.array(ids),
                "source": [units[u]["source"] for u in r["unit"]],
                "shard": [units[u]["shard"] for u in r["unit"]],
                "unit": [units[u]["unit"] for u in r["unit"]],
                "key": [self.keys[i] for i in ids.tolist()],
                "sample_index": pa.array(r["sample_index"]),
                "view": pa.array(r["view"]),
            }
        )


def index_name(factory: str, views0: bool) -> str:
    return f"{'view0' if views0 else 'allviews'}-{factory.replace(',', '_')}"


def _unit_vectors(
    store: TargetStore, entries: list[dict], first: int, views0: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 [n, D] embeddings, rows [n] of ROW_FIELDS) part by part: one part in memory at a time."""
    for u, entry in enumerate(entries, start=first):
        for p, rel in enumerate(entry["parts"]):
            t = part_views(store, rel, views0)
            rows = np.zeros(t.num_rows, dtype=ROW_FIELDS)
            rows["unit"], rows["part"], rows["row"] = u, p, np.arange(t.num_rows)
            rows["sample_index"] = t.column("sample_index").to_numpy()
            rows["view"] = t.column("view").to_numpy()
            yield embeddings_of(t).astype(np.float32), rows


def _training_sample(store: TargetStore, entries: list[dict], views0: bool, want: int) -> np.ndarray:
    """At least `want` vectors (or all) from whole units taken in a seeded order."""
    order = sorted(
        range(len(entries)), key=lambda u: stable_hash64("index-train", entries[u]["source"], entries[u]["unit"])
    )
    got, n = [], 0
    for u in order:
        for emb, _ in _unit_vectors(store, [entries[u]], u, views0):
            got.append(emb)
            n += len(emb)
        if n >= want:
            break
    return np.concatenate(got)[:want] if got else np.zeros((0, 1), np.float32)


def _add_units(gallery: Gallery, entries: list[dict], views0: bool) -> None:
    rows = [gallery.rows]
    total = sum(1 for e in entries for _ in e["parts"])
    with tqdm(total=total, desc=f"index {gallery.name}", unit="part", disable=total < 2) as bar:
        for emb, r in _unit_vectors(gallery.store, entries, len(gallery.units), views0):
            gallery.index.add(emb)
            rows.append(r)
            bar.update(1)
    gallery.rows = np.concatenate(rows)
    gallery.meta["units"] = gallery.units + entries
    gallery.meta["vectors"] = int(gallery.index.ntotal)


def save_gallery(gallery: Gallery) -> None:
    storage, base = gallery.store.storage, layout.index_dir(gallery.name)
    storage.write_bytes(f"{base}/index.faiss", faiss.serialize_index(gallery.index).tobytes())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({name: gallery.rows[name] for name, _ in ROW_FIELDS}), sink, compression="zstd")
    storage.write_bytes(f"{base}/rows.parquet", sink.getvalue().to_pybytes())
    storage.write_bytes(f"{base}/index.json", json.dumps(gallery.meta, indent=1).encode())


def load_gallery(store: TargetStore, name: str) -> Gallery | None:
    storage, base = store.storage, layout.index_dir(name)
    if not storage.exists(f"{base}/index.json"):
        return None
    meta = json.loads(storage.read_bytes(f"{base}/index.json"))
    index = faiss.deserialize_index(np.frombuffer(storage.read_bytes(f"{base}/index.faiss"), np.uint8))
    t = pq.read_table(io.BytesIO(storage.read_bytes(f"{base}/rows.parquet")))
    rows = np.zeros(t.num_rows, dtype=ROW_FIELDS)
    for column, _ in ROW_FIELDS:
        rows[column] = t.column(column).to_numpy()
    if index.ntotal != len(rows) or meta["vectors"] != len(rows):
        raise StoreError(
            f"{storage.url_of(base)}: index holds {index.ntotal} vectors, its rows table "
            f"{len(rows)}: damaged; rebuild it with --rebuild-index"
        )
    return Gallery(store, name, index, rows, meta)


def stale_units(gallery: Gallery, records: list[CommitRecord]) -> list[str]:
    """Units the index covers that are not committed now as the attempt it read."""
    now = {(r.source, r.unit): r.attempt_id for r in records}
    return [f"{u['source']}/{u['unit']}" for u in gallery.units if now.get((u["source"], u["unit"])) != u["attempt_id"]]


# The settings that make an index (not nprobe, rerank, query_batch: those only search it).
BUILD_KEYS = ("index", "flat_max_gb", "ivf_lists", "pq_bytes", "train_vectors")


def family(factory: str) -> str:
    """A factory string without its list count: an auto-sized IVF index stays itself as the store grows."""
    return re.sub(r"IVF\d+", "IVF", factory)


def existing_indexes(store: TargetStore, views0: bool) -> list[tuple[str, dict]]:
    """(name, index.json) of the store's indexes over the same views."""
    prefix = f"{layout.INDEXES_DIR}/{index_name('', views0)}"
    out = []
    for rel in store.storage.list_files(layout.INDEXES_DIR):
        if rel.startswith(prefix) and rel.endswith("/index.json"):
            out.append((rel.split("/")[1], json.loads(store.storage.read_bytes(rel))))
    return sorted(out)


def open_gallery(
    store: TargetStore, cfg: RetrievalConfig, views0: bool, rebuild: bool = False, say: Callable[[str], None] = print
) -> Gallery:
    """The store's index for `cfg` and `views0`: loaded as is, extended by units committed since, or
    built by streaming every committed CLIP unit (bounded memory: one part, plus the IVF/PQ
    training sample). A stale index is refused unless `rebuild`."""
    records = store.commits("clip")
    manifest = store.manifest("clip")
    if manifest is None or not records:
        raise StoreError(f"store {store.url} has no committed CLIP units to search")
    dim = int(manifest.must_match["teacher"]["output"]["embed_dim"])
    views = [0] if views0 else list(range(int(manifest.must_match["policy"]["views"])))
    vectors = sum(r.n_stored for r in records) * len(views)
    factory = index_factory(cfg, vectors, dim)
    build = {k: getattr(cfg, k) for k in BUILD_KEYS}
    name = index_name(factory, views0)
    if not rebuild:  # the index these settings built before, though its auto-sized lists may differ now
        name = next(
            (
                n
                for n, meta in existing_indexes(store, views0)
                if meta.get("build") == build and family(meta["factory"]) == family(factory)
            ),
            name,
        )
    gallery = None if rebuild else load_gallery(store, name)
    if gallery is not None:
        stale = stale_units(gallery, records)
        if stale:
            raise StoreError(
                f"index {name} is stale: {len(stale)} unit(s) it covers were redone since it was built "
                f"({', '.join(stale[:3])}); run again with --rebuild-index"
            )
        covered = {(u["source"], u["unit"]) for u in gallery.units}
        new = [unit_entry(r) for r in records if (r.source, r.unit) not in covered]
        if not new:
            say(f"index {name}: {gallery.meta['vectors']} vectors over {len(gallery.units)} units, up to date")
            return gallery
        _add_units(gallery, new, views0)
        save_gallery(gallery)
        say(
            f"index {name}: extended by {len(new)} unit(s) committed since it was built, "
            f"{gallery.meta['vectors']} vectors"
        )
        return gallery
    entries = [unit_entry(r) for r in records]
    index = new_index(factory, dim)
    trained_on = 0
    if not index.is_trained:
        sample = _training_sample(store, entries, views0, cfg.train_vectors)
        index.train(sample)
        trained_on = len(sample)
    meta = {
        "factory": factory,
        "dim": dim,
        "views": views,
        "metric": "inner_product",
        "vectors": 0,
        "units": [],
        "trained_on": trained_on,
        "build": build,
    }
    gallery = Gallery(store, name, index, np.zeros(0, dtype=ROW_FIELDS), meta)
    _add_units(gallery, entries, views0)
    save_gallery(gallery)
    say(f"index {name}: built over {len(entries)} units, {gallery.meta['vectors']} vectors of D={dim}")
    return gallery
