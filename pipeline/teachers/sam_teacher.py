"""The SAM teacher: segment_anything's `Sam`, weights loaded on CPU with `weights_only=True`.

`segment_anything.build_sam*` call `torch.load` without `map_location` or `weights_only`, so the
model is built empty from `storage_schemas.models.sam_models` and the checkpoint loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segment_anything.modeling import Sam

from pipeline.config import SamTeacherConfig
from storage_schemas.models.checkpoints import weights_sha256
from storage_schemas.models.sam_models import SAM_ARCHS, load_sam
from storage_schemas.models.teacher_fingerprint import TeacherFingerprint
from storage_schemas.pixels.sam_transforms import IMAGE_SIZE
from storage_schemas.store.mask_logits import LOW_RES


@dataclass
class SamTeacher:
    sam: Sam  # eval mode, no grad
    fingerprint: TeacherFingerprint


def load_sam_teacher(
    cfg: SamTeacherConfig, storage_options: dict[str, Any] | None = None, device: str = "cpu"
) -> SamTeacher:
    sam = load_sam(cfg.model, cfg.checkpoint, storage_options, cfg.init_seed)
    weights = cfg.checkpoint if cfg.checkpoint is not None else f"random(seed={cfg.init_seed})"
    sam.to(device).eval().requires_grad_(False)
    arch = SAM_ARCHS[cfg.model]
    grid = IMAGE_SIZE // sam.image_encoder.patch_embed.proj.stride[0]
    fingerprint = TeacherFingerprint(
        family="segment_anything",
        arch=cfg.model,
        weights_sha256=weights_sha256(sam),
        preprocess={
            "image_size": IMAGE_SIZE,
            "resize": "longest_side",
            "pad": "bottom_right",
            "pixel_mean": [float(v) for v in sam.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in sam.pixel_std.flatten()],
        },
        output={
            "low_res_size": LOW_RES,
            "image_embedding_shape": [arch.prompt_embed_dim, grid, grid],
            "mask_threshold": float(sam.mask_threshold),
        },
        weights=weights,
    )
    return SamTeacher(sam, fingerprint)
