"""The CLIP teacher: an open_clip model built by `open_clip.create_model_and_transforms`.

Weights come from a pretrained tag (`ViT-L-14` + `datacomp_xl_s13b_b90k`, the paper's teacher), a
checkpoint path or fsspec URL, or a seeded random init. The tiny architecture
`samclip-tiny-clip` (storage_schemas/models/model_configs/) is registered with open_clip on import, so tests and the
demo use open_clip's own classes and transforms with weights made by `pipeline.teachers.tiny`.
Both sides load it: the pipeline to make targets, evaluation to score the teacher beside the student.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import open_clip
import torch

from storage_schemas.models.checkpoints import (
    describe_mismatch,
    fetch_checkpoint,
    is_path_like,
    load_state_dict_file,
    weights_sha256,
)
from storage_schemas.models.clip_archs import TINY_CLIP_ARCH, no_weights_warning  # noqa: F401 (registers it)
from storage_schemas.models.teacher_config import ClipTeacherConfig
from storage_schemas.models.teacher_fingerprint import TeacherFingerprint
from storage_schemas.plumbing.errors import CheckpointError, ConfigError


@dataclass
class ClipTeacher:
    model: open_clip.CLIP  # eval mode, no grad
    preprocess_val: Callable  # open_clip's evaluation transform: PIL image -> [3, S, S] float
    tokenizer: Callable
    fingerprint: TeacherFingerprint

    @property
    def embed_dim(self) -> int:
        return self.fingerprint.output["embed_dim"]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, S, S] normalised -> [B, D] float32, L2-normalised."""
        return torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)


def load_clip_teacher(
    cfg: ClipTeacherConfig, storage_options: dict[str, Any] | None = None, device: str = "cpu"
) -> ClipTeacher:
    """Build the teacher named by `cfg`; one-line `UserError`s for a bad name, tag or file."""
    known = open_clip.list_models()
    if cfg.arch not in known:
        close = [m for m in known if m.lower().startswith(cfg.arch.lower()[:5])][:5]
        raise ConfigError(
            f"config key 'clip.teacher.arch': unknown open_clip architecture {cfg.arch!r}; "
            f"expected a name from open_clip.list_models(){' such as ' + ', '.join(close) if close else ''}"
        )
    pretrained, weights = None, "random"
    if cfg.pretrained is None:
        torch.manual_seed(cfg.init_seed)
        weights = f"random(seed={cfg.init_seed})"
    elif is_path_like(cfg.pretrained):
        pretrained = fetch_checkpoint(cfg.pretrained, storage_options)
        weights = cfg.pretrained
        _check_fits(cfg.arch, pretrained)
    else:
        tags = open_clip.list_pretrained_tags_by_model(cfg.arch)
        if cfg.pretrained not in tags:
            raise ConfigError(
                f"config key 'clip.teacher.pretrained': {cfg.pretrained!r} is not a pretrained tag of "
                f"{cfg.arch} (tags: {', '.join(tags) or 'none'}) nor a checkpoint path"
            )
        pretrained = weights = cfg.pretrained
    try:
        model, _, preprocess_val = open_clip.create_model_and_transforms(cfg.arch, pretrained=pretrained, device=device)
    except RuntimeError as e:
        if "state_dict" in str(e):
            raise CheckpointError(f"checkpoint '{weights}' does not fit {cfg.arch}: {_first_line(e)}") from None
        if "Failed to download" not in str(e):
            raise
        raise CheckpointError(
            f"pretrained weights {cfg.pretrained!r} for {cfg.arch} cannot be downloaded; "
            "without network access, pass a local checkpoint path as clip.teacher.pretrained"
        ) from None
    except (OSError, ValueError) as e:  # other hub failures
        raise CheckpointError(
            f"pretrained weights {cfg.pretrained!r} for {cfg.arch} cannot be loaded ({_first_line(e)}); "
            "without network access, pass a local checkpoint path as clip.teacher.pretrained"
        ) from None
    model.eval().requires_grad_(False)
    pp = model.visual.preprocess_cfg
    fingerprint = TeacherFingerprint(
        family="open_clip",
        arch=cfg.arch,
        weights_sha256=weights_sha256(model),
        preprocess={
            "size": list(pp["size"]) if isinstance(pp["size"], (tuple, list)) else [pp["size"]] * 2,
            "mean": list(pp["mean"]),
            "std": list(pp["std"]),
            "interpolation": pp["interpolation"],
            "resize_mode": pp["resize_mode"],
        },
        output={
            "embed_dim": int(
                model.text_projection.shape[1] if model.text_projection is not None else model.visual.output_dim
            )
        },
        weights=weights,
    )
    return ClipTeacher(model, preprocess_val, open_clip.get_tokenizer(cfg.arch), fingerprint)


def _check_fits(arch: str, path: str) -> None:
    """Compare a checkpoint's keys and shapes with the architecture before open_clip loads it.

    open_clip's own failure is a multi-kilobyte RuntimeError; this names the first difference.
    Keys that open_clip's loader converts or resizes itself are left to it.
    """
    ckpt = load_state_dict_file(path)
    if next(iter(ckpt), "").startswith("module."):
        ckpt = {k[len("module.") :]: v for k, v in ckpt.items()}
    with no_weights_warning():
        skeleton = open_clip.create_model(arch, pretrained=None, device="meta")  # shapes only, no memory
    fixed_by_open_clip = ("positional_embedding", "logit_scale", "logit_bias", "position_ids")
    model_sd = {k: v for k, v in skeleton.state_dict().items() if not k.endswith(fixed_by_open_clip)}
    ckpt = {k: v for k, v in ckpt.items() if k in model_sd or not k.endswith(fixed_by_open_clip)}
    problem = describe_mismatch(model_sd, ckpt)
    if problem:
        raise CheckpointError(f"checkpoint '{path}' does not fit open_clip {arch}: {problem}")


def _first_line(e: BaseException) -> str:
    return re.split(r"[\n\r]", str(e).strip(), maxsplit=1)[0][:300]
