"""Transfer sets: retrieval against brute force and at IVF/PQ scale, query-balanced selection, the
CLI on the sample store, and training on a subset (reads and trained views)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.config import RayConfig, RetrievalConfig
from pipeline.sample.synthetic_vectors import clustered_vectors, recall_at
from pipeline.transfer.contact_sheet import GAP, LABEL, TILE
from pipeline.transfer.gallery_index import index_factory, new_index, open_gallery, search, set_nprobe, vector_scores
from pipeline.transfer.select import select_balanced
from storage_schemas.plumbing.identity import SampleId, is_held_out
from storage_schemas.store import open_store
from storage_schemas.store.subsets import read_subset
from support.commands import REPO
from support.job_configs import tiny_clip, write_job

HELD_OUT = 0.2


def quiet(_: str) -> None:
    pass


def stored_views(store) -> tuple[list[tuple], np.ndarray]:
    """Every stored view of the store, read with plain pyarrow: ids (source, shard, key, view), fp16 [n, D]."""
    t = store.read_table("clip", "views")
    ids = list(zip(*(t.column(c).to_pylist() for c in ("source", "shard", "key", "view"))))
    emb = t.column("embedding").combine_chunks()
    return ids, np.asarray(emb.values, np.float16).reshape(len(ids), -1)


def found_ids(gallery, rows: np.ndarray) -> list[list[tuple]]:
    d = gallery.describe(np.unique(rows[rows >= 0])).to_pylist()
    by_row = {r["row"]: (r["source"], r["shard"], r["key"], r["view"]) for r in d}
    return [[by_row[r] for r in q if r >= 0] for q in rows]


@pytest.fixture
def store_copy(clip_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(clip_store, root)
    return root


def test_retrieval_equals_a_brute_force_numpy_top_k_for_flat_and_ivfpq(store_copy):
    store = open_store(str(store_copy))
    ids, emb = stored_views(store)
    queries = np.random.default_rng(3).standard_normal((12, emb.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ emb.astype(np.float32).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    top = np.take_along_axis(sims, order, 1)
    assert (np.diff(np.sort(sims, axis=1)[:, ::-1][:, :11], axis=1) < 0).all(), "ties: the order would be arbitrary"
    expected = [[ids[i] for i in q] for q in order]
    for cfg in (
        RetrievalConfig(index="flat"),
        # Every list searched and every vector re-ranked: the approximate path must give exactly this.
        RetrievalConfig(index="ivfpq", ivf_lists=4, nprobe=4, pq_bytes=8, rerank=400),
    ):
        gallery = open_gallery(store, cfg, views0=False, say=quiet)
        got_sims, rows = gallery.search(queries, 10, cfg)
        assert found_ids(gallery, rows) == expected, cfg.index
        np.testing.assert_allclose(got_sims, top, rtol=0, atol=1e-6)
    assert gallery.meta["factory"] == "IVF4,PQ16x4fs"
    assert gallery.meta["trained_on"] == len(ids)

    view0 = open_gallery(store, RetrievalConfig(index="flat"), views0=True, say=quiet)
    assert view0.index.ntotal == sum(1 for i in ids if i[3] == 0)
    assert set(view0.rows["view"].tolist()) == {0}


def test_ivfpq_reaches_recall_0_9_at_64_byte_codes_and_a_sixteenth_of_the_lists():
    gallery, queries = clustered_vectors(200_000, 128, seed=11, queries=200)
    truth_index = new_index("SQfp16", 128)
    truth_index.add(gallery.astype(np.float32))
    _, truth = truth_index.search(queries, 10)
    cfg = RetrievalConfig(index="ivfpq", ivf_lists=256, pq_bytes=32, rerank=256, train_vectors=20_000)
    factory = index_factory(cfg, len(gallery), 128)
    assert factory == "IVF256,PQ64x4fs"  # 64 sub-quantizers x 4 bits = 32 bytes a vector
    index = new_index(factory, 128)
    index.train(
        gallery[np.random.default_rng(0).choice(len(gallery), cfg.train_vectors, replace=False)].astype(np.float32)
    )
    index.add(gallery.astype(np.float32))
    assert set_nprobe(index, None) == 16
    _, rows = search(index, queries, 10, cfg.rerank, vector_scores(lambda ids: gallery[ids]))
    assert recall_at(rows, truth) >= 0.9


def test_an_index_is_extended_by_new_units_refused_when_stale_and_left_alone_by_gc(store_copy):
    from pipeline.validate import validate
    from storage_schemas.store.root import StoreRoot

    commits = sorted((store_copy / "_commits" / "clip" / "sample").iterdir())
    held = commits[-1].read_bytes()
    commits[-1].unlink()
    store = open_store(str(store_copy))
    cfg = RetrievalConfig(index="flat")
    first = open_gallery(store, cfg, views0=False, say=quiet)
    assert len(first.units) == 3
    commits[-1].write_bytes(held)
    said = []
    extended = open_gallery(store, cfg, views0=False, say=said.append)
    assert "extended by 1 unit" in said[0]
    assert extended.index.ntotal == 400
    fresh = open_gallery(store, cfg, views0=False, rebuild=True, say=quiet)
    q = np.eye(extended.meta["dim"], dtype=np.float32)[:5]
    assert found_ids(extended, extended.search(q, 20, cfg)[1]) == found_ids(fresh, fresh.search(q, 20, cfg)[1])

    # An IVF index with auto-sized lists (300 vectors: 7 lists; 400 would size 10) is extended, not rebuilt.
    ivf = RetrievalConfig(index="ivfpq", pq_bytes=8, rerank=400)
    commits[-1].unlink()
    small = open_gallery(store, ivf, views0=False, say=quiet)
    commits[-1].write_bytes(held)
    said.clear()
    grown = open_gallery(store, ivf, views0=False, say=said.append)
    assert small.meta["factory"] == grown.meta["factory"] == "IVF7,PQ16x4fs"
    assert "extended by 1 unit" in said[0]
    assert grown.index.ntotal == 400
    assert grown.meta["trained_on"] == 300
    none = np.full((2, 5), -1, np.int64)  # no candidate at all: nothing to read, nothing to score
    assert (grown.score(q[:2], none) == 0).all()

    report = validate(StoreRoot(str(store_copy)))
    assert report.problems == []
    assert not [p for p in report.orphans if p.startswith("indexes/")]

    record = json.loads(held)
    record["attempt_id"] = "0" * 32  # the unit redone by a later job
    commits[-1].write_text(json.dumps(record))
    from storage_schemas.plumbing.errors import StoreError

    with pytest.raises(StoreError, match="stale: 1 unit.*--rebuild-index"):
        open_gallery(store, cfg, views0=False, say=quiet)


def test_a_query_set_where_nothing_decodes_and_a_missing_shard_are_one_line(tmp_path):
    import pyarrow as pa

    from pipeline.transfer.queries import embeddings_array, query_table_schema
    from storage_schemas.datasets.folders import encoded_images
    from storage_schemas.plumbing.errors import ConfigError

    failed = {"query_id": [0, 1], "key": ["a", "b"], "label": [None, None], "reason": ["truncated", "empty"]}
    table = pa.table({**failed, "detail": ["", ""], "embedding": [None, None]}, schema=query_table_schema(8))
    ids, vectors = embeddings_array(table)
    assert ids.shape == (0,)
    assert vectors.shape == (0, 8)  # main() then says none of them decodes
    with pytest.raises(ConfigError, match=r"^data '.*/pets-\{000\.\.001\}\.tar': shard .*/pets-000\.tar not found$"):
        list(encoded_images(str(tmp_path / "pets-{000..001}.tar")))


def test_query_balanced_selection_rule():
    # 3 queries x 4 candidates; rows are gallery views, images group views 0-1, 2-3, ...
    rows = np.array([[5, 6, 1, 2], [5, 3, 4, 7], [8, 9, 10, 11]])
    sims = np.array([[0.8, 0.7, 0.6, 0.5], [0.9, 0.6, 0.5, 0.4], [0.9, 0.8, 0.7, 0.6]], np.float32)
    images = rows // 2
    ok = rows != 10  # view 10 held out or excluded
    chosen = select_balanced(sims, rows, images, ok, per_query=2)
    got = {q: chosen.row[chosen.query == q].tolist() for q in range(3)}
    # View 5 goes to query 1 (0.9, closer than query 0's 0.8), and query 0 takes its next two.
    assert got == {0: [6, 1], 1: [5, 3], 2: [8, 11]}  # query 2: 9 shares image 4 with 8, 10 not usable
    assert sorted(chosen.row.tolist()) == sorted(set(chosen.row.tolist()))
    assert (chosen.short == 0).all()
    assert not chosen.needs_more.any()
    assert chosen.rank.tolist() == [0, 1, 0, 1, 0, 1]

    floor = select_balanced(sims, rows, images, ok, per_query=3, min_similarity=0.65)
    assert floor.short.tolist() == [2, 2, 2]
    assert (floor.similarity >= 0.65).all()
    assert not floor.needs_more.any()  # every list ends below the floor: a deeper search adds nothing
    deeper = select_balanced(sims, rows, images, ok, per_query=4)
    assert deeper.needs_more.tolist() == [True, True, True]
    gone = select_balanced(sims[:, :2], np.array([[5, -1], [5, 3], [8, 9]]), images[:, :2], ok[:, :2], per_query=2)
    assert gone.needs_more.tolist() == [False, False, True]  # query 0's list is the whole gallery


def test_deeper_searches_give_what_full_candidate_lists_give(store_copy, monkeypatch):
    import argparse

    import pipeline.transfer.build as transfer_set
    from pipeline.config import JobConfig
    from storage_schemas.store import StoreConfig

    store = open_store(str(store_copy))
    cfg = JobConfig(store=StoreConfig(str(store_copy)), sources=[], retrieval=RetrievalConfig(index="flat"))
    gallery = open_gallery(store, cfg.retrieval, views0=False, say=quiet)
    _, emb = stored_views(store)
    queries = emb[::37][:8].astype(np.float32)  # stored views as queries: their neighbourhoods overlap
    args = argparse.Namespace(per_query=30, held_out=HELD_OUT, min_similarity=None)
    monkeypatch.setattr(transfer_set, "FIRST_DEPTH", 1)  # lists of 30 first: several queries run out
    depths = []
    search = gallery.search
    monkeypatch.setattr(gallery, "search", lambda q, n, c: depths.append(n) or search(q, n, c))
    chosen, _ = transfer_set.select(gallery, queries, args, set(), cfg)
    assert len(depths) > 1, "the test never searched deeper"
    monkeypatch.setattr(transfer_set, "FIRST_DEPTH", 1000)  # every list the whole gallery at once
    full, _ = transfer_set.select(gallery, queries, args, set(), cfg)
    assert chosen.row.tolist() == full.row.tolist()
    assert chosen.query.tolist() == full.query.tolist()
    assert (chosen.short == 0).all()


def _gallery_image(corpus, shard: str, key: str) -> bytes:
    with tarfile.open(corpus / "clip" / f"{shard}.tar") as tar:
        return tar.extractfile(f"{key}.jpg").read()


@pytest.fixture(scope="module")
def subset_store(clip_store, sample_corpus, tiny_teachers, tmp_path_factory, ray_cluster):
    """A copy of the CLIP session store with subset 'pets' made by the CLI, and what it was made from."""
    from pipeline.transfer.build import main

    root = tmp_path_factory.mktemp("subset")
    store = root / "store"
    shutil.copytree(clip_store, store)
    gallery = open_store(str(store)).read_table("clip", "views").to_pylist()
    train_keys = sorted(
        {
            (r["shard"], r["key"])
            for r in gallery
            if r["view"] == 0 and not is_held_out(SampleId(r["source"], r["shard"], r["key"]), HELD_OUT)
        }
    )
    queries = root / "queries"
    queries.mkdir()
    as_query = train_keys[:2]
    for shard, key in as_query:
        (queries / f"{shard}-{key}.jpg").write_bytes(_gallery_image(sample_corpus, shard, key))
    for i, photo in enumerate(sorted((sample_corpus / "eval" / "classify").iterdir())[:3]):
        shutil.copy(sorted(photo.iterdir())[0], queries / f"eval-{i}.jpg")
    (queries / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    shutil.copytree(sample_corpus / "eval" / "classify", root / "classify")  # an evaluation set
    excluded = root / "exclude"
    excluded.mkdir()
    shard, key = train_keys[-1]
    (excluded / "test-image.jpg").write_bytes(_gallery_image(sample_corpus, shard, key))
    job = write_job(root / "job.yaml", store, [], clip=tiny_clip(tiny_teachers, views=4), ray=RayConfig(batch_size=4))

    def run(*extra: str) -> str:
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            assert main([str(job), "--query", str(queries), "--held-out", str(HELD_OUT), *extra]) == 0
        return said.getvalue()

    # The tiny random teacher puts most views above 0.95 of each other: only the image itself is excluded here.
    out = run("--per-query", "5", "--name", "pets", "--exclude", str(excluded), "--exclude-similarity", "0.9995")
    return {
        "store": store,
        "job": job,
        "queries": queries,
        "as_query": as_query,
        "excluded": (shard, key),
        "root": root,
        "run": run,
        "out": out,
    }


def test_the_cli_selects_k_per_query_without_held_out_excluded_or_repeated_views(subset_store):
    s = subset_store
    assert "query broken.jpg: skipped, " in s["out"]  # reported with its reason; the other 5 go on
    storage = open_store(str(s["store"])).storage
    subset = read_subset(storage, "pets")
    rows = subset.table.to_pylist()
    m = subset.manifest
    assert m["query"]["images"] == 6
    assert m["query"]["embedded"] == 5
    assert m["query"]["failed"] == ["broken.jpg"]
    assert m["held_out"] == HELD_OUT
    assert m["per_query"] == 5
    assert m["index"]["factory"] == "SQfp16"
    assert m["exclude"]["gallery_images_removed"] >= 1
    per_query = {}
    for r in rows:
        per_query.setdefault(r["query_id"], []).append(r)
    assert sorted(len(v) for v in per_query.values()) == [5] * 5
    views = [(r["source"], r["shard"], r["key"], r["view"]) for r in rows]
    assert len(views) == len(set(views))
    assert not [v for v in views if is_held_out(SampleId(*v[:3]), HELD_OUT)]
    assert ("sample", *s["excluded"]) not in {v[:3] for v in views}
    keys = sorted(p.name for p in s["queries"].iterdir())
    for shard, key in s["as_query"]:  # a gallery image used as a query retrieves itself first, view 0
        first = [r for r in per_query[keys.index(f"{shard}-{key}.jpg")] if r["rank"] == 0][0]
        assert (first["shard"], first["key"], first["view"]) == (shard, key, 0)
        assert first["similarity"] == pytest.approx(1.0, abs=2e-3)
    for v in per_query.values():  # a query's views are of distinct images, best first
        assert len({r["key"] for r in v}) == len(v)
        assert [r["rank"] for r in sorted(v, key=lambda r: -r["similarity"])] == list(range(len(v)))
    sheet = Image.open(io.BytesIO(storage.read_bytes("subsets/pets.png")))
    assert sheet.width > 5 * 100
    assert sheet.height >= 5 * 100
    # A header band over the rows of queries (first 8) and a footer band under them, each white
    # with a line of text: "query", "rank 1", ...; what the numbers under the crops are.
    assert sheet.height == LABEL + min(8, len(per_query)) * (TILE + LABEL) + LABEL
    pixels = np.asarray(sheet.convert("L"))
    for band in (pixels[:LABEL, :TILE], pixels[:LABEL, TILE + GAP : 2 * TILE + GAP], pixels[-LABEL:]):
        assert (band == 255).mean() > 0.5
        assert (band < 128).any()

    out = s["run"]("--per-query", "2", "--name", "pets2")
    assert "embeddings cached" in out
    assert "up to date" in out
    assert "embedding them" not in out
    assert len(read_subset(storage, "pets2")) == 10
    files = {ext: storage.read_bytes(f"subsets/pets2{ext}") for ext in (".parquet", ".json", ".png")}
    made = read_subset(storage, "pets2").manifest["created_at"]
    assert f"subset pets2: the stored one (made {made}) is this selection; kept" in s["run"](
        "--per-query", "2", "--name", "pets2"
    )
    assert {ext: storage.read_bytes(f"subsets/pets2{ext}") for ext in files} == files  # a rerun rewrites nothing
    assert "kept" not in s["run"]("--per-query", "3", "--name", "pets2")
    assert len(read_subset(storage, "pets2")) == 15  # other arguments: a new selection replaces it


def test_a_teacher_other_than_the_stores_is_refused(subset_store, tmp_path):
    from pipeline.teachers.tiny import write_tiny_teachers
    from pipeline.transfer.build import main
    from storage_schemas.plumbing.errors import ManifestMismatch

    other = write_tiny_teachers(str(tmp_path / "other"), seed=1)["clip"]
    with pytest.raises(ManifestMismatch, match="teacher.weights_sha256"):
        main(
            [
                str(subset_store["job"]),
                "--query",
                str(subset_store["root"] / "exclude"),
                "--per-query",
                "1",
                "--name",
                "other",
                "--set",
                f"clip.teacher.pretrained={other}",
            ]
        )


def test_a_subset_run_reads_only_subset_samples_and_trains_on_their_retrieved_views(subset_store, tmp_path):
    from storage_schemas.plumbing.counting_fs import counting_reads, read_log
    from student.data.batches import BatchStream, ClipBatchMaker, Loader
    from student.data.epoch_plan import plan_epoch
    from student.data.pieces import split_filter, unit_pieces
    from student.trainer import check_subset_items

    store = open_store(str(subset_store["store"]))
    subset = read_subset(store.storage, "pets")
    items = {f"{r['source']}/{r['shard']}/{r['key']}#{r['view']}" for r in subset.table.to_pylist()}
    train = split_filter(HELD_OUT, "train")

    def keep(s):
        return bool(subset.views_of(s)) and train(s)

    records = [r for r in store.commits("clip") if (r.source, r.unit) in subset.units]
    units = [unit_pieces(store, r, keep, lambda s: len(subset.views_of(s))) for r in records]
    check_subset_items(subset, units)
    trained: list[str] = []
    log = tmp_path / "reads.tsv"
    for epoch in range(3):
        plan = plan_epoch(units, world_size=1, rank=0, streams=1, seed=0, epoch=epoch, sizes={64: 4}, tag="clip")
        maker = ClipBatchMaker(
            store=store, keep=keep, seed=0, view_choice="random", views=None, read_run=4, mix_window=8, subset=subset
        )
        with counting_reads(log):
            batches = list(Loader(BatchStream(plan, 0, maker), workers=1))
        ids = [i for b in batches for i in b["ids"]]
        assert len(ids) == len(set(ids)) == plan.samples > 0  # an epoch trains each retrieved view once at most
        trained += ids
    assert set(trained) == items  # over three epochs' deals, every retrieved view, and nothing else
    samples = [i.split("#")[0] for i in items]
    assert len(set(samples)) < len(samples), "no sample retrieved through two views: the test shows nothing"

    # Every tar byte read lies inside a member (or header) of a subset sample.
    members = {}
    for r in records:
        with tarfile.open(r.input.url) as tar:
            members[r.input.url] = [
                (m.name.split(".")[0], m.offset, m.offset_data + -(-m.size // 512) * 512) for m in tar.getmembers()
            ]
    in_subset = {(r["shard"], r["key"]) for r in subset.table.to_pylist()}
    shard_of = {r.input.url: r.shard for r in records}
    tar_reads = [(p, a, n) for _, p, a, n in read_log(log) if p in members and n]
    assert tar_reads
    for path, a, n in tar_reads:
        for key, lo, hi in members[path]:
            if lo < a + n and a < hi:
                assert (shard_of[path], key) in in_subset, f"read {key} of {path}, not in the subset"


@pytest.mark.slow
def test_training_on_a_subset_records_it_and_refuses_another_held_out_split(subset_store, tiny_teachers, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [
        sys.executable,
        "student/train.py",
        "--config",
        "student/configs/tiny.yaml",
        "--set",
        f"store.url={subset_store['store']}",
        "--set",
        f"output_dir={out}",
        "--set",
        f"model.sam_checkpoint={tiny_teachers['sam']}",
        "--set",
        "data.clip.subset=pets",
        "--set",
        "stages=[{name: probe, epochs: 1, warmup_steps: 1}]",
        "--set",
        "val_every=1000",
        "--set",
        "log_batches=true",
    ]
    p = subprocess.run([*args, "--set", "data.held_out=0.1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert "subset 'pets' was selected with held-out fraction 0.2, this run holds out 0.1" in p.stderr
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((out / "export" / "student.json").read_text())
    subset = read_subset(open_store(str(subset_store["store"])).storage, "pets")
    assert meta["subset"]["name"] == "pets"
    assert meta["subset"]["views"] == len(subset) == 25
    assert meta["subset"]["query_checksum"] == subset.manifest["query"]["checksum"]
    trained = [
        i for line in (out / "batches" / "rank0.jsonl").read_text().splitlines() for i in json.loads(line)["clip"]
    ]
    items = {f"{r['source']}/{r['shard']}/{r['key']}#{r['view']}" for r in subset.table.to_pylist()}
    assert len(trained) == len(set(trained)) == meta["consumed"]["clip_views"] >= len(subset) // 2
    assert set(trained) <= items  # one epoch of the subset's retrieved views, and nothing else

    from student.eval.evaluate import main as evaluate

    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        assert (
            evaluate(
                [
                    "zeroshot-cls",
                    "--export",
                    str(out / "export"),
                    "--data",
                    str(subset_store["queries"].parent / "classify"),
                    "--text-tower",
                    "samclip-tiny-clip",
                    "--text-pretrained",
                    tiny_teachers["clip"],
                    "--out",
                    str(tmp_path / "eval"),
                ]
            )
            == 0
        )
    assert "trained on subset 'pets': 25 views" in said.getvalue()
    assert json.loads((tmp_path / "eval" / "zeroshot-cls.json").read_text())["subset"]["name"] == "pets"
