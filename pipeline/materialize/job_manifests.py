"""The manifests a job writes, built from its config and its teachers' fingerprints."""

from __future__ import annotations

import socket
from dataclasses import asdict

from pipeline.config import JobConfig
from storage_schemas.models.teacher_fingerprint import TeacherFingerprint
from storage_schemas.store.manifest import Manifest
from storage_schemas.store.mask_logits import num_masks


def resolve_compute_dtype(setting: str, has_gpu: bool) -> str:
    """`auto` is bf16 where teachers run on GPUs and fp32 on CPUs; targets record which."""
    if setting != "auto":
        return setting
    return "bf16" if has_gpu else "fp32"


def _recorded(fingerprint: TeacherFingerprint, device: str) -> dict:
    return {"teacher": fingerprint.recorded(), "host": socket.gethostname(), "device": device}


def clip_manifest(cfg: JobConfig, fingerprint: TeacherFingerprint, compute_dtype: str, device: str) -> Manifest:
    policy = {
        "seed": cfg.seed,
        "views": cfg.clip.views,
        "view0": "preprocess_val",
        "view_policy": asdict(cfg.clip.view_policy),
        "max_image_pixels": cfg.max_image_pixels,
    }
    return Manifest.build(
        "clip", fingerprint.must_match(), compute_dtype, policy, "fp16", _recorded(fingerprint, device)
    )


def sam_manifest(cfg: JobConfig, fingerprint: TeacherFingerprint, compute_dtype: str, device: str) -> Manifest:
    s = cfg.sam
    policy = {
        "seed": cfg.seed,
        "prompts": s.prompts,
        "mix": asdict(s.mix),
        "box_jitter": s.box_jitter,
        "points_per_prompt": s.points_per_prompt,
        "num_masks": num_masks(s.multimask),
        "rounds": s.rounds,
        "max_image_pixels": cfg.max_image_pixels,
    }
    return Manifest.build(
        "sam", fingerprint.must_match(), compute_dtype, policy, s.precision, _recorded(fingerprint, device)
    )
