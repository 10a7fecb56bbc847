"""`python -m pipeline.teachers.tiny OUT_DIR`: tiny random-initialised teacher checkpoints.

No weights can be downloaded here, so tests and the demo run teachers built from the real classes
(open_clip's CLIP with the `samclip-tiny-clip` config; segment_anything's SAM modules at `tiny`
widths), random-initialised from a fixed seed and saved in the formats the real weights come in:
    OUT_DIR/tiny-clip.safetensors   open_clip state dict   (clip.teacher.pretrained)
    OUT_DIR/tiny-sam.pth            SAM state dict          (sam.teacher.checkpoint)
The same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import os

import open_clip
import torch
from safetensors.torch import save_file

from storage_schemas.models.clip_archs import TINY_CLIP_ARCH, no_weights_warning
from storage_schemas.models.sam_models import build_sam
from storage_schemas.plumbing.errors import run_cli

CLIP_FILE = "tiny-clip.safetensors"
SAM_FILE = "tiny-sam.pth"
TINY_SAM_LOGIT_SCALE = 100.0


def build_tiny_sam(seed: int = 0):
    """SAM `tiny`, random from `seed`, with its mask logits spread like a trained SAM's.

    A trained SAM's low-res logits spread over about +-10; a random decoder's stay within +-0.1,
    where sigmoid-space losses (focal, dice) are flat and distillation tests say nothing. Scaling
    the mask hypernetworks' outputs gives the tiny teacher SAM's spread.
    """
    torch.manual_seed(seed)
    sam = build_sam("tiny")
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(TINY_SAM_LOGIT_SCALE)
            mlp.layers[-1].bias.mul_(TINY_SAM_LOGIT_SCALE)
    return sam


def write_tiny_teachers(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Write both checkpoints (if absent) and return {'clip': path, 'sam': path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"clip": os.path.join(out_dir, CLIP_FILE), "sam": os.path.join(out_dir, SAM_FILE)}
    if not os.path.isfile(paths["clip"]):
        torch.manual_seed(seed)
        with no_weights_warning():
            model = open_clip.create_model(TINY_CLIP_ARCH, pretrained=None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, paths["clip"] + ".part")
        os.replace(paths["clip"] + ".part", paths["clip"])
    if not os.path.isfile(paths["sam"]):
        sam = build_tiny_sam(seed)
        torch.save(sam.state_dict(), paths["sam"] + ".part")
        os.replace(paths["sam"] + ".part", paths["sam"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.teachers.tiny",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    there = {f for f in (CLIP_FILE, SAM_FILE) if os.path.isfile(os.path.join(args.out_dir, f))}
    for kind, path in write_tiny_teachers(args.out_dir, args.seed).items():
        # A kept file is not checked against --seed: delete it to write another seed's.
        how = "kept: already there" if os.path.basename(path) in there else f"written, seed {args.seed}"
        print(f"{kind} teacher: {path} ({os.path.getsize(path) / 1e6:.1f} MB, {how})")
    return 0


if __name__ == "__main__":
    run_cli(main)
