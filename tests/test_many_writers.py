"""Several `python -m pipeline.materialize` jobs on one store, as users run them: two terminals, a
resubmitted Ray job, a retried KubeRay RayJob while its first driver still runs. Each job is a
subprocess on the session's Ray; they must share the work through claims, never corrupt what the
other committed, and each exit 0 only once every unit is committed by one of them.

Ray resources: the session head has 2 CPUs, so each job's teacher actor takes 0.5 and its read tasks
0.25 each, and two jobs run side by side. The job a test starts second runs in the test's process
where nothing needs it elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import s3fs

from pipeline.config import ClaimsConfig, RayConfig
from pipeline.materialize.job import main as materialize
from pipeline.validate import validate
from storage_schemas.store import StoreConfig, layout, open_store
from storage_schemas.store.root import StoreRoot
from support.commands import REPO, assert_one_line_error, run_in_process
from support.job_configs import clip_shards, clip_source, tiny_clip, write_job
from support.store_checks import assert_exactly_once

SHARED_RAY = RayConfig(batch_size=8, cpus_per_actor=0.5, read_cpus=0.25)
pytestmark = pytest.mark.slow


def shared_job(path: Path, store, corpus, teachers, lease_s: float, unit_size: int = 0, shards=None) -> Path:
    """The sample CLIP job for two jobs on one Ray. A lease of seconds, not the default minutes: a job
    polls the claims it waits on a few times a lease."""
    return write_job(
        path,
        store,
        [clip_source(shards or clip_shards(corpus), unit_size=unit_size)],
        clip=tiny_clip(teachers, views=4),
        ray=SHARED_RAY,
        claims=ClaimsConfig(lease_seconds=lease_s),
    )


class Job:
    """One materialize job running as a subprocess, its output in a file."""

    def __init__(self, tmp_path: Path, name: str, job: Path, env: dict | None = None):
        self.name, self.log, self.report = name, tmp_path / f"{name}.log", tmp_path / f"{name}.json"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.materialize", str(job), "--report", str(self.report)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def finish(self, timeout: float = 600) -> dict:
        """Wait for exit 0; returns the job's report of its one kind."""
        code = self.proc.wait(timeout=timeout)
        text = self.log.read_text()
        assert code == 0, f"{self.name} exited {code}:\n{text[-4000:]}"
        return json.loads(self.report.read_text())["reports"][0]


def run_here(tmp_path: Path, name: str, job: Path) -> dict:
    """A job run in this process, as `python -m pipeline.materialize` runs it (no fresh import of
    torch and Ray: the second job of a test starts in a second, not ten); returns its report."""
    report = tmp_path / f"{name}.json"
    assert materialize([str(job), "--report", str(report)]) == 0, name
    return json.loads(report.read_text())["reports"][0]


def wait_for(condition, timeout: float = 240, what: str = "") -> None:
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def files_under(store: Path, top: str) -> list[Path]:
    return [p for p in (store / top).rglob("*") if p.is_file()] if (store / top).exists() else []


def assert_shared(reports: list[dict], units: int) -> None:
    """Every unit committed by exactly one job; none of it done twice; and the jobs did meet (one
    found the other's claims or commits), or the test proved nothing."""
    assert sum(r["units_done"] for r in reports) == units, reports
    assert all(r["units_failed"] == [] for r in reports), reports
    assert sum(r["units_found_claimed"] + r["units_found_committed"] for r in reports) > 0, reports


def assert_errors_tables_per_attempt(store_url: str, storage_options: dict | None = None) -> None:
    """Every record lists its own attempt's errors table, and no other."""
    for record in open_store(store_url, storage_options).commits("clip"):
        errors = [f.path for f in record.files if f.path.startswith(layout.ERRORS_DIR)]
        expected = [layout.errors_path("clip", record.source, record.unit, record.attempt_id)]
        assert errors == (expected if record.n_errors else []), record


def test_two_jobs_started_together_share_the_store(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    store = tmp_path / "store"
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=30)
    a = Job(tmp_path, "a", job)
    reports = [run_here(tmp_path, "b", job), a.finish()]
    assert_shared(reports, 4)
    # Claims keep each unit to one job: no commit race was even run.
    assert [r["commit_races_lost"] for r in reports] == [0, 0], reports
    assert_exactly_once(store, sample_corpus)
    assert_errors_tables_per_attempt(str(store))
    # Nothing of the other job is left in a unit's folder: only the files of its record's attempt.
    for record in open_store(str(store)).commits("clip"):
        attempts = {
            layout.attempt_of(str(p.relative_to(store))) for p in files_under(store, f"clip/sample/{record.unit}")
        }
        assert attempts == {record.attempt_id}, (record.unit, attempts)
    assert files_under(store, layout.CLAIMS_DIR) == []  # every claim of a committed unit is gone


def test_two_jobs_on_the_s3_server_share_the_store(tmp_path, sample_corpus, tiny_teachers, ray_cluster, s3_env):
    bucket = f"shared-{uuid.uuid4().hex[:8]}"
    options = {"client_kwargs": {"endpoint_url": s3_env}}
    s3fs.S3FileSystem(**options).mkdir(bucket)
    store = StoreConfig(f"s3://{bucket}/store", options)
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=30)
    a = Job(tmp_path, "a", job)
    assert_shared([run_here(tmp_path, "b", job), a.finish()], 4)
    report = validate(StoreRoot(store.url, options))
    assert report.problems == [], (report.problems, report.orphans)
    assert report.orphans == [], (report.problems, report.orphans)
    summary = open_store(store.url, options).summary()["clip"]
    assert (summary["units"], summary["samples_in"]) == (4, 100)
    assert_errors_tables_per_attempt(store.url, options)


def test_a_second_job_started_once_the_first_committed_a_unit(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    """Units of 10 samples, so the shards are streamed (no tar index yet), each claimed whole. The first
    job is held at one commit (a barrier the test opens) while the second plans: the second finds that
    shard claimed, waits, and ends once the first has committed it, without doing it twice."""
    store, barrier = tmp_path / "store", tmp_path / "barrier"
    # The held job's driver sees no rows while it waits at the barrier, so it renews only the claims
    # it saw before: a lease well beyond the second job's start keeps them.
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=120, unit_size=10)
    hold = {"SAMCLIP_WAIT_AT": "after_data_before_commit@00002.p001", "SAMCLIP_WAIT_FOR": f"{barrier}:2"}
    a = Job(tmp_path, "a", job, env=hold)
    wait_for(lambda: files_under(store, layout.COMMITS_DIR), what="a first commit")
    b = Job(tmp_path, "b", job)
    wait_for(lambda: "waiting on" in b.log.read_text() or b.proc.poll() is not None, what="b to wait on a claim")
    (barrier / "the-test").touch()
    report_a, report_b = a.finish(), b.finish()
    assert report_b["units_found_claimed"] >= 1, report_b
    assert report_b["units_found_committed"] >= 1, report_b
    assert_shared([report_a, report_b], 12)
    assert report_a["commit_races_lost"] == report_b["commit_races_lost"] == 0
    validated = validate(StoreRoot(str(store)))
    assert validated.problems == [], validated.problems
    assert validated.units == 12, validated.problems
    by_shard = {}
    for record in open_store(str(store)).commits("clip"):
        by_shard.setdefault(record.shard, set()).add(record.attempt_id)
    assert all(len(attempts) == 1 for attempts in by_shard.values()), by_shard  # a streamed shard is one job's


def test_a_killed_job_s_claims_are_taken_over(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    """SIGKILL the first job while it holds claims: its driver is gone from this machine, so the second
    job takes its claims over at once, without waiting out the lease, and finishes exactly once."""
    store = tmp_path / "store"
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=3600)
    a = Job(tmp_path, "a", job)
    wait_for(lambda: files_under(store, layout.CLAIMS_DIR), what="a claim")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    held = {p.parent.name for p in files_under(store, layout.CLAIMS_DIR)}
    report = run_here(tmp_path, "b", job)
    assert report["claims_taken_over"] >= 1, (report, held)
    assert held, (report, held)
    assert report["units_done"] + report["units_skipped"] == 4
    assert_exactly_once(store, sample_corpus)


def test_a_paused_job_s_claims_expire_and_the_store_stays_sound(tmp_path, sample_corpus, tiny_teachers, ray_cluster):
    """SIGSTOP the first job past its lease: the second takes its claims over when they expire by the
    store's clock and commits; resumed, the first finds its claims and commits lost and cleans up
    its own files. Whichever commits first, the store is sound and holds every sample once."""
    store = tmp_path / "store"
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=6)
    a = Job(tmp_path, "a", job)
    wait_for(lambda: files_under(store, layout.CLAIMS_DIR), what="a claim")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        report_b = run_here(tmp_path, "b", job)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    report_a = a.finish(timeout=300)
    assert report_b["claims_taken_over"] >= 1, report_b
    assert report_a["units_done"] + report_b["units_done"] == 4, (report_a, report_b)
    # Resumed, the first job learnt it had been overtaken: claims lost, commits lost or found done.
    overtaken = report_a["claims_lost"] + report_a["commit_races_lost"] + report_a["units_found_committed"]
    assert overtaken >= 1, report_a
    assert_exactly_once(store, sample_corpus)  # sound, and nothing of the loser's left unlisted


def test_two_commits_of_one_unit_at_once(tmp_path, sample_corpus, tiny_teachers, ray_cluster, monkeypatch):
    """Both jobs work on the same single unit (a lease so short that claims never hold anyone back)
    and meet at a barrier between their parts and their record: one record wins, nothing it lists
    is missing, and the loser's files are gone."""
    store = tmp_path / "store"
    one_shard = [str(sample_corpus / "clip" / "00000.tar")]
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=0.05, shards=one_shard)
    barrier = {"SAMCLIP_WAIT_AT": "after_data_before_commit", "SAMCLIP_WAIT_FOR": f"{tmp_path / 'barrier'}:2"}
    a = Job(tmp_path, "a", job, env=barrier)
    for name, value in barrier.items():
        monkeypatch.setenv(name, value)
    reports = [run_here(tmp_path, "b", job), a.finish()]
    assert sorted((r["units_done"], r["commit_races_lost"]) for r in reports) == [(0, 1), (1, 0)], reports
    (record,) = open_store(str(store)).commits("clip")
    report = validate(StoreRoot(str(store)))
    assert report.problems == [], (report.problems, report.orphans)
    assert report.orphans == [], (report.problems, report.orphans)
    parts = files_under(store, "clip/sample/00000")
    assert parts
    assert all(layout.attempt_of(str(p.relative_to(store))) == record.attempt_id for p in parts)


def test_static_partitions_cover_every_unit_once(tmp_path, sample_corpus, tiny_teachers, ray_cluster, capsys):
    store = tmp_path / "store"
    job = shared_job(tmp_path / "job.yaml", store, sample_corpus, tiny_teachers, lease_s=30)
    done = []
    for i in range(2):
        assert materialize([str(job), "--partition", f"{i}/2", "--report", str(tmp_path / f"{i}.json")]) == 0
        report = json.loads((tmp_path / f"{i}.json").read_text())["reports"][0]
        assert report["units_skipped"] == 0, report  # the other partition's units are not this job's
        done.append({r.unit for r in open_store(str(store)).commits("clip")} - set().union(*done))
    assert sorted(done[0] | done[1]) == ["00000", "00001", "00002", "00003"]
    # A claim on a committed unit, as a read task Ray re-ran after its node was lost leaves it:
    # the next job that sees the unit committed removes it.
    stray = store / layout.claim_path("clip", "sample", "00000", 0)
    stray.parent.mkdir(parents=True)
    stray.write_text(json.dumps({"attempt": "0123456789ab", "generation": 0, "lease_s": 30, "driver": "x"}))
    assert materialize([str(job)]) == 0
    assert files_under(store, layout.CLAIMS_DIR) == []
    assert done[0]
    assert done[1]
    assert_exactly_once(store, sample_corpus)
    run = run_in_process(materialize, [job, "--partition", "2/2"], capsys)
    assert_one_line_error(run, "--partition '2/2'", "0 <= I < N")


def test_a_source_is_cut_one_way_whichever_job_records_it_first(tmp_path, sample_corpus, tiny_teachers):
    """Two jobs that cut one shard differently would both commit: `S.p001` names other samples under
    each cut. Both planned before either started (the race): the second to record its cut is
    refused before any work, and later jobs take the store's cut or are refused."""
    from pipeline.config import load_job_config
    from pipeline.materialize.plan import make_plan, record_cuts
    from storage_schemas.plumbing.errors import ConfigError

    store = tmp_path / "store"

    def config(name: str, unit_size: int | None):
        path = shared_job(tmp_path / f"{name}.yaml", store, sample_corpus, tiny_teachers, 30, unit_size=unit_size)
        return load_job_config(str(path))

    tens, fives = make_plan(config("a", 10)), make_plan(config("b", 5))
    record_cuts(tens)
    with pytest.raises(ConfigError, match="another job has just cut source 'sample' at 10 samples"):
        record_cuts(fives)
    with pytest.raises(ConfigError, match=r"sources.0.unit_size.*cut at 10 samples, this job has 5 samples"):
        make_plan(config("b", 5))
    assert {s.unit_size for s in make_plan(config("c", None)).kinds["clip"].shards} == {10}
