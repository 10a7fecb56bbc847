"""Workers write, the driver commits: faults inside the teacher stage stay local.

Each test runs `python -m pipeline.materialize` as a subprocess on the session's Ray (its fault
variables reach the teacher actors through the job's runtime environment) over the four sample
shards, batch 8: four parts per unit; a rerun with no fault runs in this process.
"""

import json
from pathlib import Path

import numpy as np

from pipeline.materialize.job import main as materialize
from storage_schemas.store import open_store
from support.commands import run_in_process, run_module
from support.job_configs import write_clip_job
from support.store_checks import assert_exactly_once


def committed_units(store) -> list[str]:
    return sorted(c.unit for c in open_store(str(store)).commits("clip"))


def test_a_teacher_actor_killed_after_writing_a_part_is_survived(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    store = tmp_path / "store"
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    marker = tmp_path / "killed"
    run = run_module(
        "pipeline.materialize",
        str(job),
        "--report",
        str(tmp_path / "r.json"),
        env={"SAMCLIP_KILL_AT": "after_part_written@00001", "SAMCLIP_KILL_ONCE": str(marker)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker.exists(), "the actor never reached the kill point"
    # Quiet by default: the job's own bars and summary, none of Ray Data's progress or plan logs.
    assert "Dataset" not in run.stdout + run.stderr, run.stderr[-3000:]
    assert "Progress" not in run.stderr, run.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    # The killed attempt's part was written but never reported: removed once its unit committed.
    assert report["units_done"] == 4, report
    assert report["leftovers_removed"] >= 1, report
    assert_exactly_once(store, sample_corpus)


def test_an_exception_in_one_batch_fails_its_unit_only(tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys):
    store = tmp_path / "store"
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    run = run_module(
        "pipeline.materialize",
        str(job),
        "--report",
        str(tmp_path / "r.json"),
        env={"SAMCLIP_RAISE_AT": "teacher_batch@00002"},
    )
    assert run.returncode == 1, run.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert [(f["unit"], f["reason"]) for f in report["units_failed"]] == [("00002", "InjectedFault")]
    assert "FAILED     sample/00002: InjectedFault: fault injected at teacher_batch@00002" in run.stdout
    assert committed_units(store) == ["00000", "00001", "00003"]
    rerun = run_in_process(materialize, [job], capsys)  # no fault to inject: in this process
    assert rerun.status == 0, rerun.err[-3000:]
    assert "1 done, 3 skipped" in rerun.out, rerun.err[-3000:]
    assert_exactly_once(store, sample_corpus)


def test_a_batch_that_kills_its_actor_every_time_fails_its_unit(
    tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys
):
    store = tmp_path / "store"
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    run = run_module(
        "pipeline.materialize",
        str(job),
        "--set",
        "ray.max_batch_retries=1",
        "--report",
        str(tmp_path / "r.json"),
        env={"SAMCLIP_KILL_AT": "teacher_batch@00003"},
    )
    assert run.returncode == 1, run.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    failed = {f["unit"]: f["reason"] for f in report["units_failed"]}
    # Batches in flight on the actor when it dies use up their retries too, and a batch may mix
    # units: which other units fail depends on scheduling. Each unit is either committed or failed.
    assert "00003" in failed, report
    assert set(failed.values()) == {"incomplete"}, report
    assert sorted(committed_units(store) + list(failed)) == ["00000", "00001", "00002", "00003"]
    rerun = run_in_process(materialize, [job], capsys)
    assert rerun.status == 0, rerun.err[-3000:]
    assert f"{len(failed)} done, {4 - len(failed)} skipped" in rerun.out, rerun.err[-3000:]
    assert_exactly_once(store, sample_corpus)


class ReplayedAfterCommit:
    """The teacher dataset, plus what Ray's replay of a finished-but-unacknowledged task leaves: once
    every row has reached the driver (so every unit has committed), a second copy of a committed
    part under a new attempt name, which no row reports (pipeline.materialize.unit_commit.remove_replayed_parts)."""

    def __init__(self, dataset, store: Path):
        self.dataset, self.store = dataset, store

    def iter_batches(self, **kwargs):
        yield from self.dataset.iter_batches(**kwargs)
        record = open_store(str(self.store)).commits("clip")[0]
        part = Path(self.store, record.files[0].path)
        replayed = part.with_name(part.name.split("-")[0] + "-replayed.parquet")
        replayed.write_bytes(part.read_bytes())
        self.replayed = replayed


def test_a_part_written_again_after_its_unit_committed_is_removed(
    tmp_path, sample_corpus, tiny_teachers, ray_cluster, monkeypatch
):
    import pipeline.materialize.kind_jobs
    from pipeline.materialize.job import main

    store = tmp_path / "store"
    job = write_clip_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers)
    datasets = []
    real = pipeline.materialize.kind_jobs.teacher_dataset

    def replaying(*args, **kwargs):
        datasets.append(ReplayedAfterCommit(real(*args, **kwargs), store))
        return datasets[-1]

    monkeypatch.setattr(pipeline.materialize.kind_jobs, "teacher_dataset", replaying)
    assert main([str(job), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())["reports"][0]
    assert not datasets[0].replayed.exists(), report
    assert report["leftovers_removed"] == 1, report
    assert_exactly_once(store, sample_corpus)


def test_a_collector_counts_each_sample_once():
    """Parts that overlap accepted ones are dropped whole; an error row for a sample a part holds is ignored."""
    from pipeline.materialize.sources import InputShard
    from pipeline.materialize.units import END, ERROR, PART, UnitCollector

    shard = InputShard("s", "clip", "/x/00000.tar", "00000", 1, None, {}, None)
    c = UnitCollector(shard, "00000", 0)

    def part(name, samples):
        return {
            "status": PART,
            "part": name,
            "part_samples": np.asarray(samples, np.int32).tobytes(),
            "part_files": json.dumps([{"path": f"clip/s/00000/{name}.parquet", "size": 1, "sha256": "0"}]),
            "part_rows": json.dumps({"views": len(samples)}),
        }

    c.add(part("a", [0, 1, 2]))
    c.add(part("a2", [2, 3]))  # overlaps a: dropped whole, sample 3 not covered by it
    c.add({"status": ERROR, "sample_index": 2, "key": "k2", "members": "[]", "reason": "truncated", "detail": ""})
    c.add({"status": END, "n_in_unit": 4, "shard_samples": 4, "detail": ""})
    assert not c.complete
    assert c.covered == {0, 1, 2}
    assert not c.errors
    c.add(part("b", [3]))
    assert c.complete
    assert [p.name for p in c.ordered_parts()] == ["a", "b"]
    assert c.rows() == {"views": 4}


def test_a_unit_committed_elsewhere_counts_whatever_order_its_rows_come_in(tmp_path):
    """A stream that meets a part another job committed sends `committed`, then the shard's last `end`
    row; teacher batches may hand them to the driver the other way round."""
    from pipeline.materialize.driver_loop import UnitDriver
    from pipeline.materialize.plan import JobPlan, KindPlan
    from pipeline.materialize.sources import InputShard
    from pipeline.materialize.units import COMMITTED, END
    from storage_schemas.store.commit import CommitRecord, create_commit
    from storage_schemas.store.manifest import Manifest
    from storage_schemas.store.root import StoreRoot

    storage = StoreRoot(str(tmp_path))
    shard = InputShard("src", "clip", "/x/00001.tar", "00001", 1, None, {}, 10)
    theirs = CommitRecord(
        kind="clip",
        source="src",
        shard="00001",
        unit="00001.p001",
        input=shard.ref(10, 17, 17),
        n_input=7,
        n_stored=7,
        n_errors=0,
        rows={"views": 7},
        files=[],
        policy_hash="p" * 64,
        parts=[],
    )
    create_commit(storage, theirs)
    manifest = Manifest("clip", {})
    kp = KindPlan(manifest, True, [shard], {shard.url: []})
    driver = UnitDriver(JobPlan(None, storage, {"clip": kp}), kp, "clip", None, "p" * 64, "aaaaaaaaaaaa", 300)
    base = dict(source="src", shard="00001", unit="00001.p001", unit_start=10, sample_index=-1, key="", members="[]")
    base |= dict(reason="", detail="", n_in_unit=0, shard_samples=-1, storage_retries="{}")
    driver.handle_row({**base, "status": END, "n_in_unit": 7, "shard_samples": 17})
    driver.handle_row({**base, "status": COMMITTED, "detail": json.dumps(["00001.p001"])})
    driver.report_lost_batches(set(), {("src", "00001")}, set())
    assert driver.report.ok, driver.report.units_failed
    assert driver.found_committed == {("src", "00001.p001")}, driver.report.units_failed
