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
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline.clip_targets import (
    END, ERROR, OK, UNIT_FAILED, ClipTeacherStage, RenderSpec, ShardTask, read_clip_shard, views_table,
)
from pipeline.config import JobConfig, load_job_config
from pipeline.faults import kill_point
from pipeline.plan import JobPlan, KindPlan, make_plan
from pipeline.report import JobReport
from pipeline.sources import InputShard
from pipeline.unit_writer import UnitWriter
from storage_schemas import layout
from storage_schemas.commit import CommitRecord
from storage_schemas.errors import ConfigError, run_cli
from storage_schemas.manifest import Manifest, ensure_manifest

log = logging.getLogger("pipeline.materialize")


def start_ray(cfg: JobConfig) -> bool:
    """Connect to RAY_ADDRESS's cluster or start a local one; True when the cluster has GPUs."""
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return ray.cluster_resources().get("GPU", 0) > 0


def pending_parts(shard: InputShard, committed: list[CommitRecord]) -> list[int] | None:
    """Committed part indexes of a shard still to finish, or None when every unit is committed."""
    if not shard.unit_size:
        return None if committed else []
    done = {r.input.sample_start // shard.unit_size for r in committed}
    total = next((r.input.shard_samples for r in committed if r.input.shard_samples is not None), None)
    if total is not None and done >= set(range(max(1, math.ceil(total / shard.unit_size)))):
        return None
    return sorted(done)


@dataclass
class UnitCollector:
    """A unit's rows as they arrive from the teacher stage, deduplicated on sample index."""

    shard: InputShard
    unit: str
    part_start: int
    samples: dict[int, dict] = field(default_factory=dict)
    errors: dict[int, dict] = field(default_factory=dict)
    n_in_unit: int | None = None
    shard_samples: int | None = None
    note: str = ""

    def add(self, row: dict) -> None:
        if row["status"] == END:
            self.n_in_unit, self.note = int(row["n_in_unit"]), str(row["detail"])
            self.shard_samples = int(row["shard_samples"]) if row["shard_samples"] >= 0 else None
        elif row["status"] == OK:
            self.samples[int(row["sample_index"])] = row
        elif row["status"] == ERROR:
            self.errors[int(row["sample_index"])] = row

    @property
    def complete(self) -> bool:
        return self.n_in_unit is not None and len(self.samples) + len(self.errors) == self.n_in_unit


def commit_clip_unit(plan: JobPlan, manifest: Manifest, c: UnitCollector, views: int) -> CommitRecord:
    shard, kind = c.shard, "clip"
    writer = UnitWriter(plan.storage, kind, shard.source, shard.name, c.unit)
    samples = [c.samples[i] for i in sorted(c.samples)]
    embed_dim = manifest.must_match["teacher"]["output"]["embed_dim"]
    writer.write_table(layout.data_path(kind, shard.source, c.unit),
                       views_table(shard.source, shard.name, samples, views, embed_dim))
    errors = [dict(kind=kind, source=shard.source, shard=shard.name, unit=c.unit, key=str(e["key"]),
                   sample_index=int(e["sample_index"]), members=json.loads(str(e["members"])),
                   reason=str(e["reason"]), detail=str(e["detail"])) for _, e in sorted(c.errors.items())]
    ref = shard.ref(c.part_start, c.part_start + c.n_in_unit, c.shard_samples)
    return writer.commit(ref, c.n_in_unit, errors, {"views": len(samples) * views}, manifest.policy_hash)


def run_clip(plan: JobPlan, kp: KindPlan, has_gpu: bool) -> JobReport:
    import ray

    cfg = plan.config
    report = JobReport("clip")
    manifest = ensure_manifest(plan.storage, kp.manifest)
    must = manifest.must_match
    pp, vp = must["teacher"]["preprocess"], cfg.clip.view_policy
    spec = RenderSpec(seed=cfg.seed, views=cfg.clip.views, size=pp["size"][0], interpolation=pp["interpolation"],
                      scale=tuple(vp.scale), ratio=tuple(vp.ratio), flip=vp.flip, max_pixels=cfg.max_image_pixels)
    tasks, shards = [], {}
    for shard in kp.shards:
        done = pending_parts(shard, kp.committed[shard.url])
        report.units_skipped += len(kp.committed[shard.url])
        if done is None:
            continue
        shards[(shard.source, shard.name)] = shard
        tasks.append(asdict(ShardTask(shard.source, shard.name, shard.url, json.dumps(shard.storage_options),
                                      shard.unit_size or 0, done)))
    if not tasks:
        return report
    gpus = cfg.ray.gpus_per_actor if cfg.ray.gpus_per_actor is not None else (1 if has_gpu else 0)
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    ds = ds.flat_map(read_clip_shard, fn_kwargs={"spec": spec}, num_cpus=cfg.ray.decode_cpus)
    ds = ds.map_batches(
        ClipTeacherStage,
        fn_constructor_kwargs=dict(teacher_cfg=cfg.clip.teacher, storage_options=cfg.store.storage_options,
                                   compute_dtype=must["compute_dtype"], threads=int(cfg.ray.cpus_per_actor)),
        batch_size=cfg.ray.batch_size, batch_format="numpy", num_gpus=gpus, num_cpus=cfg.ray.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.teacher_actors),
    )
    collectors: dict[tuple[str, str], UnitCollector] = {}
    failed_shards: set[tuple[str, str]] = set()
    committed_units: set[tuple[str, str]] = set()
    t0 = time.time()
    progress = tqdm(desc="clip units committed", unit="unit", total=None if any(t["unit_size"] for t in tasks) else len(tasks))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["status"])):
            row = {k: v[i] for k, v in batch.items()}
            shard_key, unit_key = (row["source"], row["shard"]), (row["source"], row["unit"])
            if shard_key in failed_shards or unit_key in committed_units:
                continue  # rows Ray re-ran after a worker died, or of a shard that failed
            if row["status"] == UNIT_FAILED:
                failed_shards.add(shard_key)
                for key in [k for k in collectors if k[0] == row["source"] and collectors[k].shard.name == row["shard"]]:
                    del collectors[key]
                report.units_failed.append(dict(source=row["source"], shard=row["shard"], unit=row["unit"],
                                                reason=str(row["reason"]), detail=str(row["detail"])))
                continue
            if row["status"] == OK:
                kill_point("during_teacher")
            c = collectors.get(unit_key)
            if c is None:
                c = collectors[unit_key] = UnitCollector(shards[shard_key], str(row["unit"]), int(row["part_start"]))
            c.add(row)
            if c.complete:
                record = commit_clip_unit(plan, manifest, c, spec.views)
                del collectors[unit_key]
                committed_units.add(unit_key)
                report.units_done += 1
                report.samples += record.n_input
                report.samples_stored += record.n_stored
                report.rows["views"] += record.rows["views"]
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
    parser.add_argument("config", help="job config YAML (see jobs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set clip.views=4 (repeatable)")
    parser.add_argument("--report", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    for i, source in enumerate(cfg.sources):
        if source.kind == "sam":
            raise ConfigError(f"config key 'sources.{i}.kind': SAM targets are not implemented yet; "
                              "expected clip sources only")
    has_gpu = start_ray(cfg)
    plan = make_plan(cfg, device="cuda" if has_gpu else "cpu")
    reports = [run_clip(plan, kp, has_gpu) for kind, kp in plan.kinds.items() if kind == "clip"]
    for r in reports:
        print(r.table())
    write_report(plan, reports, args.report)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    run_cli(main)
