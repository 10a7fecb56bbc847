"""Each kind's job: its manifest checked and written, its read and teacher stages, then the driver.

    report = run_clip(plan, plan.kinds["clip"], has_gpu, attempt)   # or run_sam; JOBS[kind] picks one

`pipeline.materialize` runs JOBS[kind] for each kind the job names.
"""

from __future__ import annotations

from pipeline.materialize.clip_targets import ClipTeacherStage, RenderSpec, read_clip_shard
from pipeline.materialize.driver_loop import run_units
from pipeline.materialize.plan import JobPlan, KindPlan
from pipeline.materialize.report import JobReport
from pipeline.materialize.sam_targets import PromptSpec, SamTeacherStage, read_sam_shard
from pipeline.materialize.teacher_dataset import KindStages, teacher_dataset
from storage_schemas.pixels.views import RESIZE_MODES
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.store.manifest import ensure_manifest

# Ray's default block target is 128 MiB: ~2,500 encoded CLIP images or ~100 SA-1B pairs that a
# teacher would wait for. These keep a block to a teacher batch or two.
CLIP_BLOCK_BYTES = 16 * 1024 * 1024
SAM_BLOCK_BYTES = 4 * 1024 * 1024


def run_clip(plan: JobPlan, kp: KindPlan, has_gpu: bool, attempt: str) -> JobReport:
    """The CLIP kind's units of the plan: views rendered and embedded, then committed."""
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

    stages = KindStages(
        read_clip_shard,
        ClipTeacherStage,
        dict(teacher_cfg=cfg.clip.teacher, spec=spec, compute_dtype=must["compute_dtype"], attempt=attempt),
        batch_size=cfg.ray.batch_size,
        block_bytes=CLIP_BLOCK_BYTES,
    )
    return run_units(plan, kp, "clip", _dataset(cfg, has_gpu, stages), manifest.policy_hash, attempt)


def run_sam(plan: JobPlan, kp: KindPlan, has_gpu: bool, attempt: str) -> JobReport:
    """The SAM kind's units of the plan: prompts sampled and mask logits predicted, then committed."""
    cfg = plan.config
    manifest = ensure_manifest(plan.storage, kp.manifest)
    spec = PromptSpec(seed=cfg.seed, sam=cfg.sam, max_pixels=cfg.max_image_pixels)

    stages = KindStages(
        read_sam_shard,
        SamTeacherStage,
        dict(spec=spec, compute_dtype=manifest.must_match["compute_dtype"], attempt=attempt),
        batch_size=cfg.ray.sam_batch_size,
        block_bytes=SAM_BLOCK_BYTES,
    )
    return run_units(plan, kp, "sam", _dataset(cfg, has_gpu, stages), manifest.policy_hash, attempt)


def _dataset(cfg, has_gpu: bool, stages: KindStages):
    return lambda tasks: teacher_dataset(cfg, has_gpu, tasks, stages)


JOBS = {"clip": run_clip, "sam": run_sam}
