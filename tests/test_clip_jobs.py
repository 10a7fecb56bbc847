"""Materialize jobs under dirty input and crashes: every sample exactly once in the store or errors."""

import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from dirty_images import MAX_PIXELS, dirty_samples
from pipeline.config import RayConfig
from pipeline.materialize.job import main as materialize
from pipeline.materialize.plan import DEFAULT_UNIT_SIZE
from storage_schemas.store import open_store
from support.commands import REPO, run_in_process, run_module
from support.job_configs import clip_shards, clip_source, tiny_clip, write_clip_job, write_job
from support.store_checks import assert_exactly_once, shard_keys


def clip_job(tmp_path, teachers, source: str, shards, views: int, unit_size: int | None = None, **fields):
    """A one-source CLIP job writing to tmp_path/store; `fields` are JobConfig's (ray=..., max_image_pixels=...)."""
    return write_job(
        tmp_path / "job.yaml",
        tmp_path / "store",
        [clip_source(shards, name=source, unit_size=unit_size)],
        clip=tiny_clip(teachers, views=views),
        **fields,
    )


def assert_exactly_once_in(store_path, keys: set[str], views: int = 1) -> None:
    rows = open_store(str(store_path)).read_table("clip", "views").to_pylist()
    assert sorted((r["key"], r["view"]) for r in rows) == sorted((k, v) for k in keys for v in range(views))


def committed(store_path) -> dict:
    return (
        {c.unit: c.attempt_id for c in open_store(str(store_path)).commits("clip")}
        if (store_path / "clip").exists()
        else {}
    )


@pytest.mark.slow
@pytest.mark.parametrize("point, committed_before", [("after_data_before_commit:2", 1), ("during_teacher", 0)])
def test_kill_at_a_named_point_then_rerun(
    point, committed_before, tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys
):
    store = tmp_path / "store"
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    killed = run_module("pipeline.materialize", str(job), env={"SAMCLIP_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = committed(store)
    assert len(before) == committed_before
    if point.startswith("after_data"):  # the second unit's parts are there, its record is not
        assert len([d for d in (store / "clip" / "sample").iterdir() if any(d.glob("*.parquet"))]) >= 2
        (first,) = open_store(str(store)).commits("clip")
        assert len(open_store(str(store)).committed_files("clip", "views")) == len(first.parts)
    rerun = run_in_process(materialize, [job], capsys)  # the rerun in this process: no second start-up
    assert rerun.status == 0, rerun.err[-2000:]
    after = assert_exactly_once(store, sample_corpus)
    assert all(after[u] == a for u, a in before.items()), "committed units were recomputed"
    assert f"{4 - committed_before} done, {committed_before} skipped" in rerun.out


@pytest.mark.slow
def test_kill_from_outside_at_a_random_time_then_rerun(tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys):
    """SIGKILL the job from outside while some units are committed and others are not, then rerun.

    A kill before the first commit or after the last tests nothing the named kill points do not,
    so the test watches the store and kills at a random moment after the first commit; K = 32
    views make each shard take long enough to decode and render (about 1 s per unit here) that
    the last commit comes seconds after the first.
    """
    views = 32
    store = tmp_path / "store"
    job = clip_job(
        tmp_path, tiny_teachers, "sample", clip_shards(sample_corpus), views, unit_size=0, ray=RayConfig(batch_size=8)
    )
    extra_delay = np.random.default_rng(int(time.time())).uniform(0.0, 0.5)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.materialize", str(job)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    t0, seen, timeline = time.time(), 0, []
    try:
        while proc.poll() is None and time.time() - t0 < 240:
            if (n := len(committed(store))) != seen:
                seen = n
                timeline.append((round(time.time() - t0, 2), n))
                if n >= 1:  # the first commit seen (or, too late, all of them)
                    if n < 4:
                        time.sleep(extra_delay)
                    break
            time.sleep(0.05)
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = committed(store)
    state = f"extra delay {extra_delay:.2f} s, commits seen (s, n) {timeline}, {len(before)} committed at the kill"
    assert not finished_first, (
        f"the job ended (exit {proc.returncode}) before the kill, so nothing was killed "
        f"mid-job; the partial-commit window is too short: {state}\n{log.read_text()[-2000:]}"
    )
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(before) < 4, f"the kill must land with some units committed and not all: {state}"
    rerun = run_in_process(materialize, [job], capsys)
    assert rerun.status == 0, (state, rerun.err[-2000:])
    after = assert_exactly_once(store, sample_corpus, views=views)
    assert all(after[u] == a for u, a in before.items()), (state, "committed units were recomputed")
    assert f"{4 - len(before)} done, {len(before)} skipped" in rerun.out, (state, rerun.out[-2000:])


@pytest.fixture(scope="module")
def dirty_shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("dirty")
    with tarfile.open(out / "00000.tar", "w") as tar:
        members = [(f"{name}.{ext}", data) for name, ext, data, _ in dirty_samples()]
        members.append(("notext.txt", b"a caption without an image"))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out / "00000.tar"


def test_dirty_shard_stores_the_good_and_records_the_bad(dirty_shard, tmp_path, tiny_teachers, ray_cluster):
    job = clip_job(tmp_path, tiny_teachers, "dirty", dirty_shard, 2, max_image_pixels=MAX_PIXELS)
    assert materialize([str(job), "--report", str(tmp_path / "report.json")]) == 0
    store = open_store(str(tmp_path / "store"))
    (commit,) = store.commits("clip")
    expected_errors = {name: reason for name, _, _, reason in dirty_samples() if reason} | {"notext": "missing_image"}
    errors = {r["key"]: r["reason"] for r in store.read_table("clip", "errors").to_pylist()}
    assert errors == expected_errors
    views = store.read_table("clip", "views").to_pylist()
    stored = {r["key"] for r in views}
    assert stored == {name for name, _, _, reason in dirty_samples() if reason is None}
    assert commit.n_input == len(stored) + len(errors) == 14
    assert commit.n_errors == len(errors)
    sizes = {r["key"]: (r["width"], r["height"]) for r in views}
    assert sizes["exif"] == (20, 40)
    assert sizes["one"] == (1, 1)
    assert sizes["wide"] == (500, 10)
    report = json.loads((tmp_path / "report.json").read_text())["reports"][0]
    assert report["errors_by_reason"] == {
        "truncated": 1,
        "empty": 1,
        "not_an_image": 1,
        "decompression_bomb": 1,
        "missing_image": 1,
    }


def test_img2dataset_count_mismatch_is_reported(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    import shutil

    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    shutil.copy(sample_corpus / "clip" / "00000.tar", shard)
    stats = json.loads((sample_corpus / "clip" / "00000_stats.json").read_text())
    stats["successes"] += 3
    (tmp_path / "in" / "00000_stats.json").write_text(json.dumps(stats))
    job = clip_job(tmp_path, tiny_teachers, "s", f"{shard}", 1)
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 0
    notes = json.loads((tmp_path / "r.json").read_text())["reports"][0]["shard_notes"]
    assert notes == ["s/00000: img2dataset _stats.json says 28 successes, the tar holds 25 samples"]


def test_unit_size_cuts_a_shard_into_units(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    job = clip_job(tmp_path, tiny_teachers, "s", f"{sample_corpus}/clip/00001.tar", 1, unit_size=10)
    assert materialize([str(job)]) == 0
    commits = open_store(str(tmp_path / "store")).commits("clip")
    assert [(c.unit, c.input.sample_start, c.input.sample_stop, c.n_input) for c in commits] == [
        ("00001.p000", 0, 10, 10),
        ("00001.p001", 10, 20, 10),
        ("00001.p002", 20, 25, 5),
    ]
    assert commits[-1].input.shard_samples == 25
    views = open_store(str(tmp_path / "store")).read_table("clip", "views")
    assert views.num_rows == 25
    assert sorted(set(views.column("key").to_pylist())) == sorted(shard_keys(sample_corpus, "00001"))
    assert (tmp_path / "store" / "_tar_index" / "clip" / "s" / "00001.parquet").exists()


def test_a_rerun_reads_the_lost_part_by_range(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    import shutil

    shard = tmp_path / "00001.tar"
    shutil.copy(sample_corpus / "clip" / "00001.tar", shard)
    job = clip_job(tmp_path, tiny_teachers, "s", f"{shard}", 1, unit_size=10)
    assert materialize([str(job)]) == 0
    # Part 1 lost. The tar's first header destroyed (same size): a stream could not pass it, a
    # ranged read of part 1 through the index never reads it.
    (tmp_path / "store" / "_commits" / "clip" / "s" / "00001.p001.json").unlink()
    data = bytearray(shard.read_bytes())
    data[:512] = b"\xff" * 512
    shard.write_bytes(bytes(data))
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert (report["units_done"], report["units_skipped"], report["samples"]) == (1, 2, 10)
    assert_exactly_once_in(tmp_path / "store", shard_keys(sample_corpus, "00001"))


def test_clip_targets_for_sa1b_images_are_a_config_change(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    """SA-1B tars as a `kind: clip` source: the same view machinery, the same sample identity.
    No unit_size in the config: a new store cuts shards at the default."""
    job = clip_job(tmp_path, tiny_teachers, "sa1b", f"{sample_corpus}/sam/sa_000000.tar", 2)
    assert materialize([str(job)]) == 0
    store = open_store(str(tmp_path / "store"))
    (commit,) = store.commits("clip")
    assert (commit.unit, commit.input.unit_size) == ("sa_000000.p000", DEFAULT_UNIT_SIZE["clip"])
    views = store.read_table("clip", "views")
    assert commit.n_stored == 6
    assert commit.n_errors == 0
    assert views.num_rows == 12
    assert sorted(set(views.column("key").to_pylist())) == [f"sa_{i}" for i in range(1, 7)]


def test_a_truncated_shard_fails_alone_and_the_job_exits_nonzero(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    import shutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for shard in ("00000", "00001"):
        shutil.copy(sample_corpus / "clip" / f"{shard}.tar", inputs / f"{shard}.tar")
    data = (inputs / "00001.tar").read_bytes()
    with tarfile.open(inputs / "00001.tar") as tar:
        cut_at = tar.getmembers()[30].offset  # a member boundary: tarfile alone would not notice
    (inputs / "00001.tar").write_bytes(data[:cut_at])
    job = clip_job(tmp_path, tiny_teachers, "s", f"{inputs}/{{00000..00001}}.tar", 1, unit_size=0)
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert report["units_done"] == 1
    assert [f["unit"] for f in report["units_failed"]] == ["00001"]
    assert "end-of-archive marker" in report["units_failed"][0]["detail"]
    assert [c.unit for c in open_store(str(tmp_path / "store")).commits("clip")] == ["00000"]


def test_a_truncated_shard_cut_into_units_commits_the_units_before_the_cut(
    tmp_path, sample_corpus, tiny_teachers, ray_cluster
):
    import shutil

    shard = tmp_path / "00001.tar"
    shutil.copy(sample_corpus / "clip" / "00001.tar", shard)
    with tarfile.open(shard) as tar:
        cut_at = tar.getmembers()[45].offset  # sample 15 of 3 members each: part p001 (samples 10-19)
    shard.write_bytes(shard.read_bytes()[:cut_at])
    job = clip_job(tmp_path, tiny_teachers, "s", f"{shard}", 1, unit_size=10)
    assert materialize([str(job), "--report", str(tmp_path / "r.json")]) == 1
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    failed = report["units_failed"]
    assert [(f["unit"], f["reason"]) for f in failed] == [("00001.p001", "ValueError"), ("00001.p*", "shard_failed")]
    assert "end-of-archive marker" in failed[0]["detail"]
    assert "units after 00001.p001 not read" in failed[1]["detail"]
    assert [c.unit for c in open_store(str(tmp_path / "store")).commits("clip")] == ["00001.p000"]


def test_a_changed_input_or_unit_size_is_refused_on_resume(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    import shutil

    from storage_schemas.plumbing.errors import ConfigError, StoreError

    shard = tmp_path / "00001.tar"
    shutil.copy(sample_corpus / "clip" / "00001.tar", shard)
    job = clip_job(tmp_path, tiny_teachers, "s", f"{shard}", 1, unit_size=10)
    assert materialize([str(job)]) == 0
    with pytest.raises(ConfigError, match=r"cut at 10 samples, this job has 0 \(whole shards\)"):
        materialize([str(job), "--set", "sources.0.unit_size=0"])
    with pytest.raises(ConfigError, match="cut at 10 samples, this job has 5 samples"):
        materialize([str(job), "--set", "sources.0.unit_size=5"])
    # Unset, the store's unit size is kept: everything is committed already.
    assert materialize([str(job), "--set", "sources.0.unit_size=null", "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["reports"][0]["units_skipped"] == 3
    with open(shard, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(StoreError, match="changed since unit 00001.p000 was committed"):
        materialize([str(job)])
