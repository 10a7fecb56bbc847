"""Exporting the trained student: its weights, its description and its SAM path.

    export_student(model, cfg.model, 768, "out/run/export")  # student.safetensors + student.json
                                                             # + sam_vit_b.pth (SAM's own layout)

`sam_vit_b.pth` is the student's SAM path (backbone, neck, prompt encoder, mask decoder) as a
state dict that `segment_anything.sam_model_registry["vit_b"](checkpoint=...)` loads, so SAM
users can drop the student in. `student.modeling.load` reads an export back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from safetensors.torch import save_file

from student.config import ModelConfig
from student.modeling.model import SamClip

STUDENT_WEIGHTS, STUDENT_META = "student.safetensors", "student.json"


def sam_state_dict(model: SamClip) -> dict[str, torch.Tensor]:
    """The student's SAM path under `segment_anything.modeling.Sam`'s parameter names."""
    parts = {
        "image_encoder.patch_embed": model.patch_embed,
        "image_encoder.blocks": model.blocks,
        "image_encoder.neck": model.neck,
        "prompt_encoder": model.prompt_encoder,
        "mask_decoder": model.mask_decoder,
    }
    out = {f"{prefix}.{k}": v.detach() for prefix, m in parts.items() for k, v in m.state_dict().items()}
    out["image_encoder.pos_embed"] = model.pos_embed.detach()
    return out


def export_student(
    model: SamClip, cfg: ModelConfig, embed_dim: int, out_dir: str, extra: dict | None = None
) -> dict[str, str]:
    """Write the student's weights, its description and its SAM path; returns the file paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "student": os.path.join(out_dir, STUDENT_WEIGHTS),
        "meta": os.path.join(out_dir, STUDENT_META),
        "sam": os.path.join(out_dir, f"sam_{cfg.sam_arch}.pth"),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, paths["student"])
    # On CPU: the registry's `torch.load` has no map_location.
    torch.save({k: v.cpu().clone() for k, v in sam_state_dict(model).items()}, paths["sam"])
    # Last and whole: student.json marks a finished run (student.run_dir.run_status).
    meta = {"model": {**asdict(cfg), "sam_checkpoint": None}, "embed_dim": embed_dim, **(extra or {})}
    with open(paths["meta"] + ".tmp", "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(paths["meta"] + ".tmp", paths["meta"])
    return paths
