"""Checks of a whole store: sound (`pipeline.validate` finds nothing), every sample exactly once."""

from __future__ import annotations

import tarfile


def assert_sound(store_path) -> None:
    """`pipeline.validate` finds no problem; the only unlisted files are temporaries of killed writes."""
    from pipeline.validate import validate
    from storage_schemas.store.root import StoreRoot

    report = validate(StoreRoot(str(store_path)))
    assert report.problems == [], report.problems
    assert all(".tmp-" in p for p in report.orphans), report.orphans


def shard_keys(corpus, shard: str) -> set[str]:
    with tarfile.open(corpus / "clip" / f"{shard}.tar") as tar:
        return {m.name.split(".")[0] for m in tar.getmembers()}


def assert_exactly_once(store_path, corpus, views: int = 4) -> dict:
    """Every input sample exactly once in views (all K views) or errors; returns unit -> attempt id."""
    from storage_schemas.store import open_store

    store = open_store(str(store_path))
    commits = store.commits("clip")
    assert sorted(c.unit for c in commits) == ["00000", "00001", "00002", "00003"]
    table = store.read_table("clip", "views").to_pylist()
    errors = store.read_table("clip", "errors")
    error_keys = [(r["shard"], r["key"]) for r in (errors.to_pylist() if errors else [])]
    per_sample: dict[tuple, list[int]] = {}
    for r in table:
        per_sample.setdefault((r["shard"], r["key"]), []).append(r["view"])
    assert all(sorted(v) == list(range(views)) for v in per_sample.values())
    assert not set(per_sample) & set(error_keys) and len(error_keys) == len(set(error_keys))
    for c in commits:
        keys = {(c.shard, k) for k in shard_keys(corpus, c.shard)}
        assert {k for k in per_sample if k[0] == c.shard} | {k for k in error_keys if k[0] == c.shard} == keys
        assert c.n_input == len(keys)
    listed = store.committed_files("clip", "views")  # one file per part, each under its unit's folder
    assert sorted(listed) == sorted(f"{store_path}/clip/sample/{c.unit}/{p}.parquet" for c in commits for p in c.parts)
    assert_sound(store_path)
    return {c.unit: c.attempt_id for c in commits}
