"""The store's create-if-absent primitive (`StoreRoot.create`), on a local disk and on the moto S3
server, and the start-up probe that refuses a store where it cannot be had."""

import errno
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import s3fs

from pipeline.materialize.job import main as materialize
from storage_schemas.plumbing.errors import StoreError
from storage_schemas.store.root import RetryPolicy, StoreRoot
from support.commands import assert_one_line_error, run_in_process
from support.job_configs import clip_shards, clip_source, tiny_clip, write_job

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> StoreRoot:
    if request.param == "local":
        return StoreRoot(str(tmp_path / "store"), retry=FAST_RETRY)
    endpoint = request.getfixturevalue("s3_env")
    bucket = f"create-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir(bucket)
    return StoreRoot(f"s3://{bucket}/store", {"client_kwargs": {"endpoint_url": endpoint}}, retry=FAST_RETRY)


def test_a_file_is_created_once_and_never_overwritten(storage):
    assert storage.create("_commits/clip/s/u.json", b"first writer")
    assert not storage.create("_commits/clip/s/u.json", b"second writer")
    assert storage.read_bytes("_commits/clip/s/u.json") == b"first writer"
    # The same bytes again are the first writer's own create, retried: it counts as created.
    assert storage.create("_commits/clip/s/u.json", b"first writer")
    storage.check_create_if_absent()  # the probe passes where the primitive holds


def test_of_many_writers_creating_one_file_at_once_one_wins(storage):
    """Eight writers, one name, the same instant (S3: eight conditional PUTs in flight together)."""
    barrier = threading.Barrier(8)

    def create(i: int) -> bool:
        barrier.wait()
        return storage.create("_commits/clip/s/race.json", f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(create, range(8)))
    assert won.count(True) == 1
    assert storage.read_bytes("_commits/clip/s/race.json") == f"writer {won.index(True)}".encode()


def test_a_retried_create_that_had_landed_is_told_apart_from_another_writers(storage, monkeypatch):
    """The first try reaches the store, then the connection drops: the retry meets the file."""
    fs = storage.fs
    real_put, real_link = fs.pipe_file, os.link
    dropped = []

    def landed_then_dropped(put, *args, **kwargs):
        put(*args, **kwargs)
        if not dropped:
            dropped.append(args[0])
            raise ConnectionResetError(errno.ECONNRESET, "connection reset after the write (test)")

    if storage.is_local:
        monkeypatch.setattr(os, "link", lambda *a, **k: landed_then_dropped(real_link, *a, **k))
    else:
        monkeypatch.setattr(fs, "pipe_file", lambda *a, **k: landed_then_dropped(real_put, *a, **k))
    assert storage.create("claims/g000000.json", b"mine")
    assert dropped
    assert storage.retries["create"] == 1
    dropped.clear()
    assert not storage.create("claims/g000000.json", b"theirs")
    assert dropped == []
    assert storage.read_bytes("claims/g000000.json") == b"mine"


def test_the_probe_refuses_a_local_filesystem_without_hard_links(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(StoreError, match="create-if-absent failed.*Operation not permitted.*--single-writer"):
        StoreRoot(str(tmp_path)).check_create_if_absent()
    single = StoreRoot(str(tmp_path), single_writer=True)
    single.check_create_if_absent()
    assert single.create("a.json", b"1")
    assert not single.create("a.json", b"2")
    assert (tmp_path / "a.json").read_bytes() == b"1"


def test_the_probe_refuses_an_endpoint_that_ignores_conditional_writes(s3_env, monkeypatch):
    bucket = f"ignores-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env}).mkdir(bucket)
    storage = StoreRoot(f"s3://{bucket}/store", {"client_kwargs": {"endpoint_url": s3_env}})
    real = storage.fs.pipe_file
    monkeypatch.setattr(storage.fs, "pipe_file", lambda path, data, mode="overwrite", **k: real(path, data, **k))
    with pytest.raises(StoreError, match="overwrote a file created with If-None-Match"):
        storage.check_create_if_absent()


def test_a_store_without_the_primitive_is_refused_before_any_work(tmp_path, sample_corpus, tiny_teachers, capsys):

    sources = [clip_source(clip_shards(sample_corpus))]
    job = write_job(tmp_path / "job.yaml", "memory://nolinks/store", sources, clip=tiny_clip(tiny_teachers, 2))
    run = run_in_process(materialize, [job], capsys)
    assert_one_line_error(run, "memory://", "create-if-absent", "--single-writer")
