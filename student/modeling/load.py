"""Loading an exported student (`student.modeling.export`) back, for evaluation and inference.

model = load_student("out/run/export")      # SamClip in eval mode
meta = export_meta("out/run/export")        # student.json: config, store, teacher, subset ...
"""

from __future__ import annotations

import json
import os
from typing import Any

from safetensors.torch import load_file

from storage_schemas.plumbing.errors import CheckpointError
from storage_schemas.plumbing.typed_config import from_dict
from student.config import ModelConfig
from student.modeling.build import build_student
from student.modeling.export import STUDENT_META, STUDENT_WEIGHTS
from student.modeling.model import SamClip


def export_meta(export_dir: str) -> dict[str, Any]:
    """The export's description (student.json), or {} for a folder without one (load_student says why)."""
    path = os.path.join(export_dir, STUDENT_META)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_student(export_dir: str, device: str = "cpu") -> SamClip:
    """The exported student, in eval mode."""
    meta_path = os.path.join(export_dir, STUDENT_META)
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"'{export_dir}' is not a student export (no {STUDENT_META})")
    with open(meta_path) as f:
        meta = json.load(f)
    model = build_student(from_dict(ModelConfig, meta["model"]), int(meta["embed_dim"]))
    model.load_state_dict(load_file(os.path.join(export_dir, STUDENT_WEIGHTS), device="cpu"), strict=True)
    return model.to(device).eval()
