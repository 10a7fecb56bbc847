"""Named SAM architectures, built from segment_anything's own classes.

Shared because both sides load the same checkpoints: the pipeline runs SAM as a teacher, and the
student initialises its backbone and SAM head from that very checkpoint (for `tiny`, from the
random-initialised teacher file the tests and the demo make). `vit_b`, `vit_l` and `vit_h` are
SAM's published configurations; `tiny` keeps SAM's geometry (1024 px input, 64x64 embedding grid,
256x256 low-res masks) with small widths so that tests run on a CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from storage_schemas.models.checkpoints import describe_mismatch, fetch_checkpoint, load_state_dict_file
from storage_schemas.pixels.sam_transforms import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from storage_schemas.plumbing.errors import CheckpointError

PATCH_SIZE = 16


@dataclass(frozen=True)
class SamArch:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    window_size: int = 14


SAM_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamArch(
        32,
        2,
        2,
        (1,),
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
    ),
}


def build_sam(name: str) -> Sam:
    """A randomly initialised SAM of the named architecture, in eval mode (seed torch first)."""
    if name not in SAM_ARCHS:
        raise KeyError(f"unknown SAM architecture {name!r}; expected one of {', '.join(SAM_ARCHS)}")
    a = SAM_ARCHS[name]
    grid = IMAGE_SIZE // PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a.encoder_depth,
            embed_dim=a.encoder_embed_dim,
            img_size=IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a.encoder_num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a.encoder_global_attn_indexes,
            window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim,
                num_heads=a.decoder_num_heads,
            ),
            transformer_dim=a.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def load_sam(
    name: str, checkpoint: str | None, storage_options: dict[str, Any] | None = None, init_seed: int = 0
) -> Sam:
    """SAM `name` with `checkpoint` (path or fsspec URL) loaded on CPU, or random from `init_seed`."""
    torch.manual_seed(init_seed)  # only matters for a random init
    sam = build_sam(name)
    if checkpoint is not None:
        state = load_state_dict_file(fetch_checkpoint(checkpoint, storage_options))
        problem = describe_mismatch(sam.state_dict(), state)
        if problem:
            raise CheckpointError(f"checkpoint '{checkpoint}' does not fit SAM {name}: {problem}")
        sam.load_state_dict(state, strict=True)
    return sam
