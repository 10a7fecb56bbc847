"""Storage faults during a materialize job, through a wrapper filesystem that fails on purpose
(`flaky_fs.py`, registered in every Ray worker of the session):
transient errors are retried with backoff and reported, not fatal; a permanent one fails its unit
clearly while the job commits the others and exits 1; a rerun then completes the store."""

import json

import pytest

import flaky_fs  # noqa: F401  (registers flaky:// in this process)
from pipeline.config import RayConfig
from pipeline.materialize.job import main as materialize
from pipeline.validate import main as validate
from storage_schemas.store import StoreConfig, open_store
from support.commands import run_in_process
from support.job_configs import clip_shards, clip_source, tiny_clip, write_job


def flaky_job(path, corpus, teachers, root, **faults) -> str:
    """A CLIP job writing to flaky://store, which keeps its files under `root` and fails as `faults` say."""
    store = StoreConfig("flaky://store", {"root": str(root), **faults})
    return str(
        write_job(
            path,
            store,
            [clip_source(clip_shards(corpus))],
            clip=tiny_clip(teachers, views=2),
            ray=RayConfig(batch_size=8),
        )
    )


def test_transient_errors_are_retried_and_reported(sample_corpus, tiny_teachers, ray_cluster, tmp_path, capsys):
    (tmp_path / "base" / "store").mkdir(parents=True)
    job = flaky_job(tmp_path / "job.yaml", sample_corpus, tiny_teachers, tmp_path / "base", fail_writes=3, fail_reads=2)
    assert materialize([job, "--report", str(tmp_path / "report.json")]) == 0
    (report,) = json.loads((tmp_path / "report.json").read_text())["reports"]
    assert report["units_done"] == 4
    assert report["units_failed"] == []
    # Every injected fault retried once, none fatal. Each filesystem fails on its own: the driver's
    # its first 3 writes and 2 reads (all in the start-up probe's two creates of one file, the
    # second of which reads it back), the teacher actor's its first 3 writes (parts), and each of
    # the 4 read tasks' its first 3 writes (creating its shard's claim) and 2 reads (whether the
    # shard's unit is committed).
    assert report["storage_retries"] == {"create": 5 + 4 * 3, "read": 4 * 2, "write": 3}
    assert "28 transient errors retried (create 17, read 8, write 3)" in capsys.readouterr().out
    store = open_store(str(tmp_path / "base" / "store"))
    assert store.summary()["clip"]["samples_stored"] == 100
    p = run_in_process(validate, [tmp_path / "base" / "store"], capsys)
    assert p.status == 0, p.out


def test_a_permanent_error_fails_its_unit_and_the_rest_commit(
    sample_corpus, tiny_teachers, ray_cluster, tmp_path, capsys
):
    (tmp_path / "base" / "store").mkdir(parents=True)
    job = flaky_job(tmp_path / "job.yaml", sample_corpus, tiny_teachers, tmp_path / "base", deny="clip/sample/00002")
    assert materialize([job, "--report", str(tmp_path / "report.json")]) == 1
    (report,) = json.loads((tmp_path / "report.json").read_text())["reports"]
    assert report["units_done"] == 3
    (failed,) = report["units_failed"]
    assert failed["unit"] == "00002.p000"
    assert failed["reason"] == "storage_failed"
    assert "PermissionError" in failed["detail"]
    assert "permanent" in failed["detail"]
    assert "FAILED     sample/00002.p000: storage_failed" in capsys.readouterr().out
    store = open_store(str(tmp_path / "base" / "store"))
    assert sorted(r.unit for r in store.commits("clip")) == ["00000.p000", "00001.p000", "00003.p000"]
    # The fault cleared, the same command commits the missing unit and only that one.
    job = flaky_job(tmp_path / "job.yaml", sample_corpus, tiny_teachers, tmp_path / "base")
    assert materialize([job, "--report", str(tmp_path / "report.json")]) == 0
    (report,) = json.loads((tmp_path / "report.json").read_text())["reports"]
    assert (report["units_done"], report["units_skipped"]) == (1, 3)
    assert store.summary()["clip"]["samples_stored"] == 100


@pytest.mark.parametrize("op", ["write", "read"])
def test_an_error_that_stays_fails_with_the_operation_and_path_named(tmp_path, op):
    from storage_schemas.store.root import RetryPolicy, StorageFailure, StoreRoot

    (tmp_path / "base" / "store").mkdir(parents=True)
    storage = StoreRoot("flaky://store", {"root": str(tmp_path / "base"), f"fail_{op}s": 100}, RetryPolicy(3, 0.001))
    with pytest.raises(StorageFailure, match=rf"{op} flaky://store/x.bin: ConnectionResetError.*after 3 attempts"):
        storage.write_bytes("x.bin", b"1") if op == "write" else storage.read_bytes("x.bin")
    assert storage.retries[op] == 2
