"""The Ray Data pipeline of a materialize job: read tasks on CPUs feeding a pool of teacher actors.

    stages = KindStages(read_clip_shard, ClipTeacherStage, {...}, batch_size=256, block_bytes=16 << 20)
    ds = teacher_dataset(cfg, has_gpu, tasks, stages)   # rows: the parts' metadata (pipeline.materialize.parts)

Both kinds run this shape; what differs is in `KindStages` (pipeline/materialize/kind_jobs.py builds them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pipeline.config import JobConfig
from storage_schemas.store.root import StoreRoot

READS_PER_ACTOR = 2  # read tasks per teacher actor: one can wait on storage while the other feeds it


@dataclass(frozen=True)
class KindStages:
    """What one kind plugs into the pipeline."""

    read_fn: Callable[[dict], Iterator[dict]]  # a read task -> the rows of its samples
    stage: type  # the teacher actor's class; called on a batch of rows, writes parts
    stage_kwargs: dict[str, Any]  # its constructor's kind-specific arguments
    batch_size: int  # rows per teacher call
    block_bytes: int  # Ray Data's target block size for the read rows


def teacher_dataset(cfg: JobConfig, has_gpu: bool, tasks: list[dict], stages: KindStages):
    """read tasks -> flat_map(stages.read_fn) on CPU tasks -> map_batches(stages.stage) on a pool of
    teacher actors.

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
    ds.context.target_max_block_size = stages.block_bytes
    ds = ds.flat_map(
        stages.read_fn,
        num_cpus=cfg.ray.read_cpus,
        compute=ray.data.TaskPoolStrategy(size=min(len(tasks), read_concurrency(cfg))),
    )
    gpus = cfg.ray.gpus_per_actor if cfg.ray.gpus_per_actor is not None else (1 if has_gpu else 0)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but names no parameter for max_restarts/max_task_retries.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return ds.map_batches(
            stages.stage,
            fn_constructor_kwargs={
                **stages.stage_kwargs,
                "storage": StoreRoot(cfg.store.url, cfg.store.storage_options),
                "threads": int(cfg.ray.cpus_per_actor),
                "render_threads": cfg.ray.render_threads,
            },
            batch_size=stages.batch_size,
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
