"""`python -m pipeline.validate`: a sound store passes; each kind of damage is reported by name;
`--gc` removes the store's own files no commit record lists, by the rules that make it safe while
jobs run; `--uncommit-damaged` moves damaged units aside for a rerun. The command runs in this
process, through `run_cli` as `python -m pipeline.validate` runs it (tests/test_cli.py runs a
pipeline command's wrapper)."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from pipeline.validate import main as validate_main
from storage_schemas.store.commit import CommitRecord
from storage_schemas.store.root import StoreRoot
from support.commands import assert_one_line_error, run_in_process
from support.job_configs import write_clip_job
from support.store_checks import assert_exactly_once


@pytest.fixture
def store(train_store, tmp_path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(train_store, root)
    return root


@pytest.fixture
def validate(capsys):
    """validate(root, *args) -> (exit status, the JSON report, stdout)."""

    def run(root: Path, *args: str) -> tuple[int, dict, str]:
        report = root.parent / "report.json"
        p = run_in_process(validate_main, [root, "--json", report, *args], capsys)
        return p.status, json.loads(report.read_text()), p.out

    return run


def records(root: Path, kind: str) -> list[tuple[Path, CommitRecord]]:
    return [(p, CommitRecord.from_json(p.read_text())) for p in sorted((root / "_commits" / kind).rglob("*.json"))]


def recommit(root: Path, path: Path, record: CommitRecord, changed: str) -> None:
    """Rewrite the record with the new size and checksum of `changed`, so only deeper checks can tell."""
    entry = StoreRoot(str(root)).file_entry(changed)
    files = [entry if f.path == changed else f for f in record.files]
    d = json.loads(record.to_json())
    d["files"] = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files]
    path.write_text(json.dumps(d))


def rewrite_parquet(root: Path, rel: str, change) -> None:
    table = pq.read_table(root / rel)
    pq.write_table(change(table), root / rel)


def test_a_sound_store_passes(store, validate):
    code, report, out = validate(store)
    assert code == 0, out
    assert report["ok"], out
    assert report["units"] == 8, out
    assert report["orphans"] == [], out
    assert "ok: no problem found" in out


def test_each_kind_of_damage_is_reported_and_gc_removes_orphans(store, validate):
    (p0, r0), (p1, r1), (p2, r2), (p3, r3) = records(store, "clip")
    (s0, q0), (s1, q1), (s2, q2), (s3, q3) = records(store, "sam")
    views = lambda r: next(f.path for f in r.files if f.path.endswith(".parquet"))  # noqa: E731
    damage = {}
    # A listed file missing.
    (store / views(r0)).unlink()
    damage[views(r0)] = "missing"
    # A file of another size, and one with the same size but other bytes (a SAM chunk).
    with open(store / views(r1), "ab") as f:
        f.write(b"junk")
    damage[views(r1)] = "size"
    chunk = next(f.path for f in q0.files if "/c/" in f.path)
    data = bytearray((store / chunk).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store / chunk).write_bytes(bytes(data))
    damage[chunk] = "sha256"
    # Row counts: a view row dropped (the record's checksum updated, so only the count can tell).
    rewrite_parquet(store, views(r2), lambda t: t.slice(0, t.num_rows - 1))
    recommit(store, p2, r2, views(r2))
    damage[views(r2)] = "rows"

    # Content: one embedding scaled off the unit sphere, one NaN.
    def bad_embeddings(t: pa.Table) -> pa.Table:
        emb = np.asarray(t.column("embedding").to_pylist(), np.float32)
        emb[0] *= 2.0
        emb[1, 0] = np.nan
        arr = pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).reshape(-1)), emb.shape[1])
        return t.set_column(t.schema.get_field_index("embedding"), t.schema.field("embedding"), arr)

    rewrite_parquet(store, views(r3), bad_embeddings)
    recommit(store, p3, r3, views(r3))
    damage[views(r3)] = "not unit norm"
    # Logits: a NaN in a prompted slot (checksum updated).
    logits_rel = next(f.path for f in q1.files if "/c/" in f.path).split("/logits/")[0]
    array = zarr.open_group(str(store / logits_rel), mode="r+")["logits"]
    block = array[0]
    block[0, 0, 5, 5] = np.nan
    array[0] = block
    recommit(store, s1, q1, f"{logits_rel}/logits/c/0/0/0/0/0")  # the part's one shard object
    damage[logits_rel] = "not finite"
    # Shapes: an images row dropped (the part's logits array now has one image too many for it).
    images_rel = next(f.path for f in q2.files if f.path.endswith(".images.parquet"))
    rewrite_parquet(store, images_rel, lambda t: t.slice(0, t.num_rows - 1))
    recommit(store, s2, q2, images_rel)
    damage[images_rel] = "image rows"
    q2_logits = images_rel.replace(".images.parquet", ".zarr")
    # A commit record that does not parse.
    s3.write_text(s3.read_text()[:100])
    damage[str(s3.relative_to(store))] = "does not parse"
    # Leftovers of a killed attempt.
    (store / "clip" / "sample" / "00009").mkdir()
    (store / "clip" / "sample" / "00009" / "p0000000-0badf00d.parquet").write_bytes(b"half a file")
    (store / "_commits" / "clip" / "sample" / "00001.json.tmp-1234abcd").write_text("{")

    code, report, out = validate(store)
    assert code == 1
    assert not report["ok"]
    found: dict[str, str] = {}
    for p in report["problems"]:
        found[p["path"]] = found.get(p["path"], "") + p["problem"] + "; "
    for path, words in damage.items():
        assert path in found, (path, words, found.get(path), out)
        assert words in found[path], (path, words, found.get(path), out)
    assert "logits shape" in found[q2_logits]  # the part's array no longer fits its images
    assert f"PROBLEM {views(r0)}: missing" in out
    orphans = {"clip/sample/00009/p0000000-0badf00d.parquet", "_commits/clip/sample/00001.json.tmp-1234abcd"}
    assert set(report["orphans"]) == orphans
    assert set(report["damaged_units"]) == {str(p.relative_to(store)) for p in (p0, p1, p2, p3, s0, s1, s2, s3)}
    # Young files of an uncommitted unit stay (a job may be writing them); so does everything of a
    # unit whose record is damaged: it may be all that is left of it.
    code, report, _ = validate(store, "--gc", "--sizes-only")
    assert report["removed"] == []
    assert {f for files in report["kept"].values() for f in files} == orphans
    code, report, _ = validate(store, "--gc", "--sizes-only", "--grace", "0")
    assert report["removed"] == ["clip/sample/00009/p0000000-0badf00d.parquet"]
    assert not (store / "clip/sample/00009/p0000000-0badf00d.parquet").exists()
    assert all((store / f.path).exists() for f in q3.files)


def test_gc_removes_only_what_can_never_count(store, validate):
    """Unlisted files of a committed unit go at once, an uncommitted unit's once older than the grace
    period by the store's clock, claims with their unit or their age; other names never."""
    day_old = time.time() - 2 * 86400
    committed_extra = store / "clip/sample/00000/p0000008-0123456789ab-0badf00d.parquet"
    uncommitted_young = store / "clip/sample/00009/p0000000-0123456789ab-0badf00d.parquet"
    uncommitted_old = store / "_errors/clip/sample/00010/0123456789ab.parquet"
    committed_claim = store / "_claims/clip/sample/00000/g000003.json"
    live_claim = store / "_claims/clip/sample/00009/g000000.json"
    not_ours = [store / "clip/sample/00000/notes.txt", store / "clip/sample/00009/p0000000.parquet.bak"]
    for path in [committed_extra, uncommitted_young, uncommitted_old, committed_claim, live_claim, *not_ours]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.utime(uncommitted_old, (day_old, day_old))
    code, report, out = validate(store, "--gc")
    assert code == 0, out
    removed = {committed_extra, uncommitted_old, committed_claim}
    assert {store / rel for rel in report["removed"]} == removed
    assert not any(p.exists() for p in removed)
    assert uncommitted_young.exists()
    assert live_claim.exists()
    assert all(p.exists() for p in not_ours)
    assert "2 files left: a claim renewed within 86400 s (its job may be running)" in out  # 00009's part and claim
    code, report, _ = validate(store, "--gc", "--grace", "0")
    assert {store / rel for rel in report["removed"]} == {uncommitted_young, live_claim}
    assert all(p.exists() for p in not_ours)


def test_a_folder_that_is_not_a_store_is_refused_and_left_alone(sample_corpus, tmp_path, capsys):
    """The sample corpus keeps its shards under clip/ and sam/, as a store keeps its targets."""
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    before = sorted(p for p in corpus.rglob("*"))
    for args in ([corpus], [corpus, "--gc", "--grace", "0"]):
        assert_one_line_error(run_in_process(validate_main, args, capsys), "is not a target store", "_manifest.json")
    assert sorted(p for p in corpus.rglob("*")) == before


def test_a_damaged_unit_is_uncommitted_and_a_rerun_redoes_exactly_it(
    clip_store, tmp_path, sample_corpus, tiny_teachers, ray_cluster, validate
):
    from pipeline.config import RetrievalConfig
    from pipeline.materialize.job import main as materialize
    from pipeline.transfer.gallery_index import open_gallery
    from storage_schemas.store import open_store

    store = tmp_path / "store"
    shutil.copytree(clip_store, store)
    gallery = open_gallery(open_store(str(store)), RetrievalConfig(index="flat"), views0=False, say=lambda _: None)
    (path, record), (foreign, other) = records(store, "clip")[1:3]
    (store / record.files[0].path).unlink()  # readers fail on it; jobs skip it as committed
    made_elsewhere = json.loads(foreign.read_text())  # readers ignore it; it stays in a job's way
    foreign.write_text(json.dumps({**made_elsewhere, "policy_hash": "0" * 64}))
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 1
    (failed,) = json.loads((tmp_path / "r.json").read_text())["reports"][0]["units_failed"]
    assert (failed["unit"], failed["reason"]) == (other.unit, "record_in_the_way"), failed
    assert "made under another policy" in failed["detail"]
    assert "--uncommit-damaged" in failed["detail"]
    code, report, out = validate(store, "--uncommit-damaged")
    assert code == 0, out
    assert report["damaged_units"] == [str(p.relative_to(store)) for p in (path, foreign)], out
    assert [m.split("/")[-1].split(".")[0] for m in report["quarantined"]] == [record.unit, other.unit]
    assert all((store / m).exists() for m in report["quarantined"])
    assert not path.exists()
    assert not foreign.exists()
    assert "redoes exactly these units" in out
    assert f"index {gallery.name} covers 2 of them: stale until rebuilt" in out
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 0
    rerun = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert (rerun["units_done"], rerun["units_skipped"]) == (2, 2)
    assert_exactly_once(store, sample_corpus)


def test_manifest_damage_and_an_unreachable_store(store, tmp_path, validate, capsys):
    (store / "clip" / "_manifest.json").write_text("{not json")
    code, report, _ = validate(store)
    assert code == 1
    (problem,) = [p["problem"] for p in report["problems"] if p["path"] == "clip/_manifest.json"]
    assert problem.startswith("manifest does not parse (Expecting property name"), problem
    assert_one_line_error(run_in_process(validate_main, [tmp_path / "nowhere"], capsys), "nowhere")


def test_gc_keeps_what_a_job_commits_after_the_scan_and_skips_what_vanishes(store):
    """The store changes while gc runs: a unit committed between the scan and the removals keeps the
    files its record lists; files other jobs remove meanwhile are passed over."""
    from pipeline.validate import collect_garbage, validate
    from storage_schemas.store import layout
    from storage_schemas.store.commit import create_commit

    storage = StoreRoot(str(store))
    _, record = records(store, "clip")[0]
    late = {
        p: store / "clip" / "sample" / "00009" / f"p000000{i}-0123456789ab-0badf00d.parquet" for i, p in enumerate("ab")
    }
    vanishing = store / "_claims" / "clip" / "sample" / "00010" / "g000000.json"
    for path in [*late.values(), vanishing]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 86400, time.time() - 86400))
    report = validate(storage, hashes=False)
    assert {str(p.relative_to(store)) for p in [*late.values(), vanishing]} <= set(report.orphans)
    # After the scan: a job commits unit 00009 with part a (b was a dropped duplicate), and another
    # job's claim on 00010 goes.
    listed = storage.file_entry(str(late["a"].relative_to(store)))
    unit = json.loads(record.to_json())
    unit.update(unit="00009", shard="00009", files=[listed.__dict__], attempt_id="0123456789ab")
    create_commit(storage, CommitRecord.from_json(json.dumps(unit)))
    vanishing.unlink()
    collect_garbage(storage, report, grace_s=3600)
    assert late["a"].exists()
    assert not late["b"].exists()
    assert str(layout.claim_path("clip", "sample", "00010", 0)) not in report.removed
