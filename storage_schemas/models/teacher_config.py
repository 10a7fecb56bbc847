"""`clip.teacher` of a job config, read by the pipeline (to make targets) and by evaluation (to
score the teacher beside the student); apart from the loader so that reading a config imports no
open_clip."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClipTeacherConfig:
    """`clip.teacher` of a job config: which open_clip model and weights."""

    arch: str = "ViT-L-14"  # an open_clip architecture name
    # A pretrained tag, a checkpoint path or fsspec URL, or null for a random init (benchmarks only).
    pretrained: str | None = "datacomp_xl_s13b_b90k"
    init_seed: int = 0  # seeds a random init when `pretrained` is null
