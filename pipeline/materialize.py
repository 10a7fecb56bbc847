"""`python -m pipeline.materialize CONFIG.yaml [--set k=v ...]`: run the teachers once over the
sources and commit their targets into the store.

Without `RAY_ADDRESS` it starts a local Ray; with it (or under `ray job submit`) it uses that
cluster. A rerun of the same command skips committed units and redoes the others. Exit status:
0 when every unit committed, 1 when any failed (the summary names them), 2 for bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time
import warnings
from typing import Any, Callable

from tqdm import tqdm

from pipeline.clip_targets import ClipTeacherStage, RenderSpec, read_clip_shard
from pipeline.config import JobConfig, load_job_config
from pipeline.plan import JobPlan, KindPlan, make_plan
from pipeline.read_plan import read_tasks
from pipeline.report import JobReport
from pipeline.sam_targets import PromptSpec, SamTeacherStage, read_sam_shard
from pipeline.unit_commit import commit_unit, remove_leftovers, remove_part_files, remove_pending_leftovers
from pipeline.units import END, PART, TEACHER_FAILED, UNIT_FAILED, ShardTask, UnitCollector, committed_parts
from storage_schemas.pixels.views import RESIZE_MODES
from storage_schemas.plumbing.errors import ConfigError, run_cli
from storage_schemas.plumbing.faults import FAULT_ENVS, kill_point
from storage_schemas.plumbing.typed_config import add_config_arguments
from storage_schemas.store.manifest import ensure_manifest
from storage_schemas.store.root import StorageFailure, StoreRoot

READS_PER_ACTOR = 2  # read tasks per teacher actor: one can wait on storage while the other feeds it
# Ray's default block target is 128 MiB: ~2,500 encoded CLIP images or ~100 SA-1B pairs that a
# teacher would wait for. These keep a block to a teacher batch or two.
CLIP_BLOCK_BYTES = 16 * 1024 * 1024
SAM_BLOCK_BYTES = 4 * 1024 * 1024


VERBOSE_ENV = "SAMCLIP_RAY_VERBOSE"  # =1: Ray Data's own progress bars and execution logs come back


def quiet_ray_data() -> None:
    """The job shows its own bars and summary; Ray Data's per-operator progress (a block of lines
    per update when stdout is a file) and its INFO lines about execution plans stay off unless
    SAMCLIP_RAY_VERBOSE=1, for debugging a job."""
    import ray.data

    if os.environ.get(VERBOSE_ENV) == "1":
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": we did


def start_ray(cfg: JobConfig) -> bool:
    """Connect to RAY_ADDRESS's cluster or start a local one; True when the cluster has GPUs."""
    import ray

    quiet_ray_data()
    if not ray.is_initialized():
        # A test's kill point must reach the teacher actors, also on a cluster's other nodes.
        env = {k: os.environ[k] for k in FAULT_ENVS if k in os.environ}
        runtime_env = {"env_vars": env} if env else None
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING, runtime_env=runtime_env)
        else:
            # "local": always a fresh local Ray, never a stale one named by /tmp/ray/ray_current_cluster.
            ray.init(
                address="local",
                num_cpus=cfg.ray.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env=runtime_env,
            )
    return ray.cluster_resources().get("GPU", 0) > 0


def run_units(
    plan: JobPlan, kp: KindPlan, kind: str, build_dataset: Callable[[list[dict]], Any], policy_hash: str
) -> JobReport:
    """Stream the pending shards of one kind through `build_dataset(tasks)`, whose teacher actors
    write the parts, and commit every unit whose samples are all covered by parts or errors;
    shared by the CLIP and SAM sides. The driver sees metadata rows only (pipeline.parts)."""
    report = JobReport(kind)
    pending, shards, committed = [], {}, set()
    for shard in kp.shards:
        done = committed_parts(shard, kp.committed[shard.url])
        report.units_skipped += len(kp.committed[shard.url])
        committed |= {(r.source, r.unit) for r in kp.committed[shard.url]}
        if done is not None:
            shards[(shard.source, shard.name)] = shard
            pending.append((shard, done))
    if not pending:
        return report
    tasks = read_tasks(plan.storage, kind, pending)
    # Parts read by range: each is its own read, so a failure fails that unit alone.
    by_range = {(t["source"], ShardTask(**t).unit_of(t["read_parts"][0])) for t in tasks if t["read_parts"]}
    streamed = {(t["source"], t["shard"]) for t in tasks if not t["read_parts"]}
    remove_pending_leftovers(plan.storage, kind, [shards[k] for k in shards], committed)
    collectors: dict[tuple[str, str], UnitCollector] = {}
    failed_at: dict[tuple[str, str], int] = {}  # shard -> first sample of the unit its read stopped in
    read_to_end: set[tuple[str, str]] = set()  # shards whose last end row (it carries the shard's count) arrived
    committed_now: set[tuple[str, str]] = set()
    finished = set(committed)  # units committed (before or by this run) or failed

    def fail(unit_key: tuple[str, str], shard: str, reason: str, detail: str) -> None:
        finished.add(unit_key)
        collectors.pop(unit_key, None)
        report.units_failed.append(
            dict(source=unit_key[0], shard=shard, unit=unit_key[1], reason=reason, detail=detail)
        )

    def read_failed(row: dict, shard_key: tuple[str, str]) -> None:
        """The read of a shard stopped in the row's unit: that unit and the shard's later ones fail;
        earlier units were read to their end and commit as their parts arrive."""
        start = failed_at[shard_key] = int(row["part_start"])
        what = f"{row['reason']}: {row['detail']}"
        if (row["source"], row["unit"]) not in finished:
            fail((row["source"], row["unit"]), row["shard"], str(row["reason"]), str(row["detail"]))
        for key, c in list(collectors.items()):
            if (key[0], c.shard.name) == shard_key and c.part_start > start:
                fail(key, row["shard"], "shard_failed", f"its shard's read stopped in {row['unit']} ({what})")
        if shards[shard_key].unit_size:
            report.units_failed.append(
                dict(
                    source=row["source"],
                    shard=row["shard"],
                    unit=f"{row['shard']}.p*",
                    reason="shard_failed",
                    detail=f"parts after {row['unit']} not read ({what})",
                )
            )

    t0 = time.time()
    progress = tqdm(
        desc=f"{kind} units committed",
        unit="unit",
        total=None if any(t["unit_size"] and not t["read_parts"] for t in tasks) else len(tasks),
    )
    # prefetch_batches=0: with Ray's default of 1 a block is handed over only once the next has
    # arrived, which holds every commit back by a teacher batch.
    for batch in build_dataset(tasks).iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        report.driver_bytes += batch.nbytes
        for row in batch.to_pylist():
            shard_key, unit_key = (row["source"], row["shard"]), (row["source"], row["unit"])
            if row["storage_retries"] != "{}":  # a part's writes, or a read task's tar index
                report.storage_retries.update(json.loads(row["storage_retries"]))
            if row["status"] == END and row["shard_samples"] >= 0:
                read_to_end.add(shard_key)
            if row["status"] == UNIT_FAILED and unit_key in by_range:
                if unit_key not in finished:
                    fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
                continue
            if row["status"] == UNIT_FAILED and shard_key not in failed_at:
                read_failed(row, shard_key)
                continue
            if unit_key in finished or row["part_start"] >= failed_at.get(shard_key, 1 << 62):
                if row["status"] == PART and unit_key in committed_now:  # Ray re-ran a batch of a committed unit
                    report.leftovers_removed += remove_part_files(plan.storage, row)
                continue
            if row["status"] == TEACHER_FAILED:
                fail(unit_key, row["shard"], str(row["reason"]), str(row["detail"]))
                continue
            if row["status"] == PART:
                report.first_target_seconds = report.first_target_seconds or time.time() - t0
                kill_point("during_teacher")
            c = collectors.get(unit_key)
            if c is None:
                c = collectors[unit_key] = UnitCollector(shards[shard_key], str(row["unit"]), int(row["part_start"]))
            c.add(row)
            if c.complete:
                try:
                    t_commit = time.perf_counter()
                    record = commit_unit(plan.storage, kind, c, policy_hash)
                    report.commit_seconds.append([c.n_in_unit, time.perf_counter() - t_commit])
                except (StorageFailure, OSError) as e:  # the unit stays uncommitted: a rerun redoes it
                    fail(unit_key, row["shard"], "storage_failed", f"{type(e).__name__}: {e}")
                    continue
                del collectors[unit_key]
                finished.add(unit_key)
                committed_now.add(unit_key)
                report.leftovers_removed += remove_leftovers(plan.storage, record)
                report.units_done += 1
                report.samples += record.n_input
                report.samples_stored += record.n_stored
                report.rows.update({k: n for k, n in record.rows.items() if k != "errors"})
                report.errors_by_reason.update(str(e["reason"]) for e in c.errors.values())
                report.bytes_written += sum(f.size for f in record.files)
                if c.note:
                    report.shard_notes.append(f"{row['source']}/{row['shard']}: {c.note}")
                progress.update(1)
    progress.close()
    # Batches lost for good (their actor died past the retries): units some rows of which never came,
    # and shards whose last units left no row at all.
    for (source, unit), c in collectors.items():
        report.units_failed.append(
            dict(
                source=source,
                shard=c.shard.name,
                unit=unit,
                reason="incomplete",
                detail=f"{len(c.covered | c.errors.keys())} of "
                f"{c.n_in_unit if c.n_in_unit is not None else '?'} samples arrived",
            )
        )
    for source, unit in by_range - finished - collectors.keys():
        report.units_failed.append(
            dict(
                source=source,
                shard=unit.rsplit(".", 1)[0],
                unit=unit,
                reason="incomplete",
                detail="no row of it arrived (batches lost past their retries)",
            )
        )
    for key in streamed - read_to_end - failed_at.keys():
        if not any((source, c.shard.name) == key for (source, _), c in collectors.items()):
            shard = shards[key]
            report.units_failed.append(
                dict(
                    source=key[0],
                    shard=key[1],
                    unit=key[1] if not shard.unit_size else f"{key[1]}.p*",
                    reason="incomplete",
                    detail="no row of its last units arrived (batches lost past their retries)",
                )
            )
    report.seconds = time.time() - t0
    return report


def teacher_dataset(
    cfg: JobConfig,
    has_gpu: bool,
    tasks: list[dict],
    read_fn: Callable,
    stage: type,
    stage_kwargs: dict,
    batch_size: int,
    block_bytes: int,
):
    """read tasks -> flat_map(read_fn) on CPU tasks -> map_batches(stage) on a pool of teacher actors.

    At most `read_concurrency(cfg)` read tasks run at once: each holds a unit in flight, so memory
    and the work a driver crash loses stay bounded whatever the cluster's size. Ray Data's actor
    pools restart dead actors and retry their batches without limit by default, and fail the whole
    dataset on the first block that errors. Here a batch is retried `ray.max_batch_retries` times,
    then dropped: its unit never completes and is reported as failed, the other units commit.
    Each actor runs `ray.calls_per_actor` batches at once: one on the teacher, the others decoding
    or writing (the stages hold a lock around the teacher).
    """
    import ray

    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds.context.max_errored_blocks = -1
    # Rows are encoded images: small blocks reach the teachers while a shard is still being read.
    ds.context.target_max_block_size = block_bytes
    ds = ds.flat_map(
        read_fn,
        num_cpus=cfg.ray.read_cpus,
        compute=ray.data.TaskPoolStrategy(size=min(len(tasks), read_concurrency(cfg))),
    )
    gpus = cfg.ray.gpus_per_actor if cfg.ray.gpus_per_actor is not None else (1 if has_gpu else 0)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but names no parameter for max_restarts/max_task_retries.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return ds.map_batches(
            stage,
            fn_constructor_kwargs={
                **stage_kwargs,
                "storage": StoreRoot(cfg.store.url, cfg.store.storage_options),
                "threads": int(cfg.ray.cpus_per_actor),
                "render_threads": cfg.ray.render_threads,
            },
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=cfg.ray.cpus_per_actor,
            num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(
                size=cfg.ray.teacher_actors,
                max_concurrent_calls_per_actor=cfg.ray.calls_per_actor,
                enable_true_multi_threading=cfg.ray.calls_per_actor > 1,
            ),
            max_restarts=-1,
            max_task_retries=cfg.ray.max_batch_retries,
        )


def read_concurrency(cfg: JobConfig) -> int:
    """Read tasks at once: `ray.read_tasks`, else READS_PER_ACTOR per teacher actor."""
    return cfg.ray.read_tasks or READS_PER_ACTOR * cfg.ray.teacher_actors


def run_clip(plan: JobPlan, kp: KindPlan, has_gpu: bool) -> JobReport:
    cfg = plan.config
    manifest = ensure_manifest(plan.storage, kp.manifest)
    must = manifest.must_match
    pp = must["teacher"]["preprocess"]
    if pp["resize_mode"] not in RESIZE_MODES or pp["size"][0] != pp["size"][1]:
        raise ConfigError(
            f"config key 'clip.teacher.arch': {cfg.clip.teacher.arch} preprocesses with resize_mode "
            f"{pp['resize_mode']!r} at {pp['size']}; expected a square size and one of {', '.join(RESIZE_MODES)}"
        )
    spec = RenderSpec.of_job(cfg, must)

    def build_dataset(tasks: list[dict]):
        return teacher_dataset(
            cfg,
            has_gpu,
            tasks,
            read_clip_shard,
            ClipTeacherStage,
            dict(teacher_cfg=cfg.clip.teacher, spec=spec, compute_dtype=must["compute_dtype"]),
            cfg.ray.batch_size,
            CLIP_BLOCK_BYTES,
        )

    return run_units(plan, kp, "clip", build_dataset, manifest.policy_hash)


def run_sam(plan: JobPlan, kp: KindPlan, has_gpu: bool) -> JobReport:
    cfg = plan.config
    manifest = ensure_manifest(plan.storage, kp.manifest)
    spec = PromptSpec(seed=cfg.seed, sam=cfg.sam, max_pixels=cfg.max_image_pixels)

    def build_dataset(tasks: list[dict]):
        return teacher_dataset(
            cfg,
            has_gpu,
            tasks,
            read_sam_shard,
            SamTeacherStage,
            dict(spec=spec, compute_dtype=manifest.must_match["compute_dtype"]),
            cfg.ray.sam_batch_size,
            SAM_BLOCK_BYTES,
        )

    return run_units(plan, kp, "sam", build_dataset, manifest.policy_hash)


def write_report(plan: JobPlan, reports: list[JobReport], local_path: str | None) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps({"store": plan.storage.url, "reports": [r.to_dict() for r in reports]}, indent=2)
    plan.storage.write_bytes(f"_reports/materialize-{stamp}.json", text.encode())
    if local_path:
        with open(local_path, "w") as f:
            f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.materialize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--report", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    has_gpu = start_ray(cfg)
    plan = make_plan(cfg, device="cuda" if has_gpu else "cpu")
    run = {"clip": run_clip, "sam": run_sam}
    reports = []
    for kind, kp in plan.kinds.items():
        retried = plan.storage.retries.copy()
        reports.append(run[kind](plan, kp, has_gpu))
        reports[-1].storage_retries.update(plan.storage.retries - retried)  # the actors' are in already
    for r in reports:
        print(r.table())
    write_report(plan, reports, args.report)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    run_cli(main)
