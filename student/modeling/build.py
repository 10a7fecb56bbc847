"""Building the SAM-CLIP student from its config: SAM's checkpoint in, a fresh CLIP head.

model = build_student(cfg.model, embed_dim=768)
"""

from __future__ import annotations

from typing import Any

from storage_schemas.models.sam_models import load_sam
from student.config import ModelConfig
from student.modeling.model import SamClip


def build_student(cfg: ModelConfig, embed_dim: int, storage_options: dict[str, Any] | None = None) -> SamClip:
    """SAM-CLIP initialised from `cfg.sam_checkpoint` (random from `cfg.init_seed` if null)."""
    sam = load_sam(cfg.sam_arch, cfg.sam_checkpoint, storage_options, cfg.init_seed)
    return SamClip(sam, embed_dim, cfg.head_depth, cfg.pooling, cfg.mlp_hidden)
