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
from typing import Any, Callable

from tqdm import tqdm

from pipeline.clip_targets import ClipTeacherStage, RenderSpec, read_clip_shard, views_table
from pipeline.config import JobConfig, load_job_config
from storage_schemas.faults import kill_point
from pipeline.plan import JobPlan, KindPlan, make_plan
from pipeline.report import JobReport
from pipeline.sam_targets import PromptSpec, SamTeacherStage, images_table, prompts_table, read_sam_shard
from pipeline.unit_writer import UnitWriter
from pipeline.units import OK, UNIT_FAILED, UnitCollector, committed_parts, shard_task
from storage_schemas import layout
from storage_schemas.commit import CommitRecord
from storage_schemas.errors import ConfigError, run_cli
from storage_schemas.manifest import ensure_manifest
from storage_schemas.storage import StorageFailure
from storage_schemas.mask_logits import chunk_path, create_logits_array
from storage_schemas.typed_config import add_config_arguments
from storage_schemas.views import RESIZE_MODES


def start_ray(cfg: JobConfig) -> bool:
    """Connect to RAY_ADDRESS's cluster or start a local one; True when the cluster has GPUs."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:
            # "local": always a fresh local Ray, never a stale one named by /tmp/ray/ray_current_cluster.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING)
    return ray.cluster_resources().get("GPU", 0) > 0


def run_units(plan: JobPlan, kp: KindPlan, kind: str, build_dataset: Callable[[list[dict]], Any],
              commit: Callable[[UnitCollector], CommitRecord]) -> JobReport:
    """Stream the pending shards of one kind through `build_dataset(tasks)` and commit every unit
    whose samples have all arrived; shared by the CLIP and SAM sides."""
    report = JobReport(kind)
    tasks, shards = [], {}
    for shard in kp.shards:
        done = committed_parts(shard, kp.committed[shard.url])
        report.units_skipped += len(kp.committed[shard.url])
        if done is not None:
            shards[(shard.source, shard.name)] = shard
            tasks.append(shard_task(shard, done))
    if not tasks:
        return report
    collectors: dict[tuple[str, str], UnitCollector] = {}
    failed_shards: set[tuple[str, str]] = set()
    committed_units: set[tuple[str, str]] = set()
    failed_units: set[tuple[str, str]] = set()  # their files could not be written
    t0 = time.time()
    progress = tqdm(desc=f"{kind} units committed", unit="unit",
                    total=None if any(t["unit_size"] for t in tasks) else len(tasks))
    for batch in build_dataset(tasks).iter_batches(batch_size=None, batch_format="numpy"):
        report.driver_bytes += sum(v.nbytes for v in batch.values())
        for i in range(len(batch["status"])):
            row = {k: v[i] for k, v in batch.items()}
            shard_key, unit_key = (row["source"], row["shard"]), (row["source"], row["unit"])
            if shard_key in failed_shards or unit_key in committed_units or unit_key in failed_units:
                continue  # rows Ray re-ran after a worker died, or of a shard that failed
            if row["status"] == UNIT_FAILED:
                failed_shards.add(shard_key)
                report.units_failed.append(dict(source=row["source"], shard=row["shard"], unit=row["unit"],
                                                reason=str(row["reason"]), detail=str(row["detail"])))
                for key in [k for k, c in collectors.items() if (k[0], c.shard.name) == shard_key]:
                    if key[1] != row["unit"]:  # earlier parts still waiting for targets are lost too
                        report.units_failed.append(dict(source=key[0], shard=row["shard"], unit=key[1],
                                                        reason="shard_failed", detail=f"its shard failed in {row['unit']}"))
                    del collectors[key]
                continue
            if row["status"] == OK:
                report.first_target_seconds = report.first_target_seconds or time.time() - t0
                kill_point("during_teacher")
            c = collectors.get(unit_key)
            if c is None:
                c = collectors[unit_key] = UnitCollector(shards[shard_key], str(row["unit"]), int(row["part_start"]))
            c.add(row)
            if c.complete:
                del collectors[unit_key]
                try:
                    t_commit = time.perf_counter()
                    record = commit(c)
                    report.commit_seconds.append([c.n_in_unit, time.perf_counter() - t_commit])
                except (StorageFailure, OSError) as e:  # the unit stays uncommitted: a rerun redoes it
                    failed_units.add(unit_key)
                    report.units_failed.append(dict(source=row["source"], shard=row["shard"], unit=row["unit"],
                                                    reason="storage_failed", detail=f"{type(e).__name__}: {e}"))
                    continue
                committed_units.add(unit_key)
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
    for (source, unit), c in collectors.items():  # a bug guard: never leave a unit silently half done
        report.units_failed.append(dict(source=source, shard=c.shard.name, unit=unit, reason="incomplete",
                                        detail=f"{len(c.samples) + len(c.errors)} of {c.n_in_unit} samples arrived"))
    report.seconds = time.time() - t0
    return report


def teacher_dataset(cfg: JobConfig, has_gpu: bool, tasks: list[dict], read_fn: Callable, spec: Any,
                    stage: type, stage_kwargs: dict, batch_size: int, block_bytes: int | None = None):
    """shards -> flat_map(read_fn) on CPU tasks -> map_batches(stage) on a pool of teacher actors."""
    import ray

    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    if block_bytes is not None:
        ds.context.target_max_block_size = block_bytes
    ds = ds.flat_map(read_fn, fn_kwargs={"spec": spec}, num_cpus=cfg.ray.decode_cpus)
    gpus = cfg.ray.gpus_per_actor if cfg.ray.gpus_per_actor is not None else (1 if has_gpu else 0)
    return ds.map_batches(
        stage, fn_constructor_kwargs={**stage_kwargs, "storage_options": cfg.store.storage_options,
                                      "threads": int(cfg.ray.cpus_per_actor)},
        batch_size=batch_size, batch_format="numpy", num_cpus=cfg.ray.cpus_per_actor, num_gpus=gpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.teacher_actors),
    )


def run_clip(plan: JobPlan, kp: KindPlan, has_gpu: bool) -> JobReport:
    cfg = plan.config
    manifest = ensure_manifest(plan.storage, kp.manifest)
    must = manifest.must_match
    pp, vp = must["teacher"]["preprocess"], cfg.clip.view_policy
    if pp["resize_mode"] not in RESIZE_MODES or pp["size"][0] != pp["size"][1]:
        raise ConfigError(f"config key 'clip.teacher.arch': {cfg.clip.teacher.arch} preprocesses with resize_mode "
                          f"{pp['resize_mode']!r} at {pp['size']}; expected a square size and one of {', '.join(RESIZE_MODES)}")
    spec = RenderSpec(seed=cfg.seed, views=cfg.clip.views, size=pp["size"][0], interpolation=pp["interpolation"],
                      resize_mode=pp["resize_mode"], scale=tuple(vp.scale), ratio=tuple(vp.ratio), flip=vp.flip,
                      max_pixels=cfg.max_image_pixels)
    embed_dim = must["teacher"]["output"]["embed_dim"]

    def build_dataset(tasks: list[dict]):
        return teacher_dataset(cfg, has_gpu, tasks, read_clip_shard, spec, ClipTeacherStage,
                               dict(teacher_cfg=cfg.clip.teacher, compute_dtype=must["compute_dtype"]),
                               cfg.ray.batch_size)

    def commit(c: UnitCollector) -> CommitRecord:
        writer = UnitWriter(plan.storage, "clip", c.shard.source, c.shard.name, c.unit)
        samples = c.ordered_samples()
        writer.write_table(layout.data_path("clip", c.shard.source, c.unit),
                           views_table(c.shard.source, c.shard.name, samples, spec.views, embed_dim))
        return writer.commit(c.input_ref(), c.n_in_unit, c.error_rows("clip"), {"views": len(samples) * spec.views},
                             manifest.policy_hash)

    return run_units(plan, kp, "clip", build_dataset, commit)


def run_sam(plan: JobPlan, kp: KindPlan, has_gpu: bool) -> JobReport:
    cfg = plan.config
    manifest = ensure_manifest(plan.storage, kp.manifest)
    spec = PromptSpec(seed=cfg.seed, sam=cfg.sam, max_pixels=cfg.max_image_pixels)
    num_masks = manifest.must_match["policy"]["num_masks"]

    def build_dataset(tasks: list[dict]):
        # A SAM row carries a 3 MB image: one-image blocks reach the teacher while the shard is
        # still being read (Ray's default 128 MiB would hold ~40 images back).
        return teacher_dataset(cfg, has_gpu, tasks, read_sam_shard, spec, SamTeacherStage,
                               dict(teacher_cfg=cfg.sam.teacher, sam_cfg=cfg.sam,
                                    compute_dtype=manifest.must_match["compute_dtype"]),
                               cfg.ray.sam_batch_size, block_bytes=4 * 1024 * 1024)

    def commit(c: UnitCollector) -> CommitRecord:
        source, unit = c.shard.source, c.unit
        writer = UnitWriter(plan.storage, "sam", source, c.shard.name, unit)
        samples = c.ordered_samples()
        prompts = prompts_table(source, c.shard.name, samples, cfg.sam, num_masks)
        writer.write_table(layout.data_path("sam", source, unit), prompts)
        writer.write_table(layout.data_path("sam", source, unit, ".images.parquet"),
                           images_table(source, c.shard.name, samples))
        group = layout.data_path("sam", source, unit, ".zarr")
        create_logits_array(plan.storage, group, len(samples), cfg.sam.prompts * cfg.sam.rounds, num_masks,
                            cfg.sam.precision)
        writer.add_tree(group)  # the group's and the array's metadata
        for i, s in enumerate(samples):
            writer.write_bytes(chunk_path(f"{group}/logits", i), bytes(s["chunk"]))
        return writer.commit(c.input_ref(), c.n_in_unit, c.error_rows("sam"),
                             {"prompts": prompts.num_rows, "images": len(samples)}, manifest.policy_hash)

    return run_units(plan, kp, "sam", build_dataset, commit)


def write_report(plan: JobPlan, reports: list[JobReport], local_path: str | None) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps({"store": plan.storage.url, "reports": [r.to_dict() for r in reports]}, indent=2)
    plan.storage.write_bytes(f"_reports/materialize-{stamp}.json", text.encode())
    if local_path:
        with open(local_path, "w") as f:
            f.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.materialize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        reports[-1].storage_retries = plan.storage.retries - retried
    for r in reports:
        print(r.table())
    write_report(plan, reports, args.report)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    run_cli(main)
