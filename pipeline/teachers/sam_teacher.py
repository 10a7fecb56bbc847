"""The SAM teacher: segment_anything's `Sam`, weights loaded on CPU with `weights_only=True`.

`segment_anything.build_sam*` call `torch.load` without `map_location` or `weights_only`, so the
model is built empty from `storage_schemas.sam_models` and the checkpoint loaded here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from segment_anything.modeling import Sam

from pipeline.config import SamTeacherConfig
from pipeline.teachers.checkpoints import describe_mismatch, fetch_checkpoint, load_state_dict_file, weights_sha256
from pipeline.teachers.fingerprint import TeacherFingerprint
from storage_schemas.errors import CheckpointError
from storage_schemas.mask_logits import LOW_RES
from storage_schemas.sam_models import IMAGE_SIZE, SAM_ARCHS, build_sam


@dataclass
class SamTeacher:
    sam: Sam  # eval mode, no grad
    fingerprint: TeacherFingerprint


def load_sam_teacher(cfg: SamTeacherConfig, storage_options: dict[str, Any] | None = None,
                     device: str = "cpu") -> SamTeacher:
    torch.manual_seed(cfg.init_seed)  # only matters for a random init
    sam = build_sam(cfg.model)
    weights = f"random(seed={cfg.init_seed})"
    if cfg.checkpoint is not None:
        path = fetch_checkpoint(cfg.checkpoint, storage_options)
        state = load_state_dict_file(path)
        problem = describe_mismatch(sam.state_dict(), state)
        if problem:
            raise CheckpointError(f"checkpoint '{cfg.checkpoint}' does not fit SAM {cfg.model}: {problem}")
        sam.load_state_dict(state, strict=True)
        weights = cfg.checkpoint
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
