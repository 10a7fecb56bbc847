"""SAM-CLIP (paper section 3, appendix A): one SAM ViT backbone, a CLIP head and a SAM head.

    model = SamClip(sam, embed_dim=768)     # sam: a segment_anything Sam with the checkpoint loaded
    emb = model.clip_embed(images_224)                              # [B, D], L2-normalised
    dense = model.clip_dense(images_448)                            # [B, 28, 28, D] per-patch features
    out = model(clip_images=u8_224, sam_images=u8_1024, sam_input_hw=hw, prompts=PromptBatch(...))
    out["clip"]: [B, D]; out["masks"]: [N, M, 256, 256] for N prompts over the SAM images

- backbone: SAM's image encoder up to its last block (patch embedding, absolute position embedding
  resampled to the input's token grid, transformer blocks); SAM's own forward accepts 1024 px only.
- CLIP head: 3 transformer blocks initialised from the backbone's last block, max pooling over patch
  tokens (average as an ablation), LayerNorm, an MLP with two hidden layers (width 1024) to the
  teacher's width D. On ViT-B with D = 768 the head has 23.9M parameters next to the backbone's
  88.9M (85.7M without its 64x64 position table); the paper's appendix D says about 25%.
  The same LayerNorm + MLP per token gives dense features.
- SAM head: SAM's neck and mask decoder; SAM's prompt encoder is kept frozen.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam
from torch import nn

from storage_schemas.store.mask_logits import num_masks
from storage_schemas.store.tables import STRUCTURE_PARTS


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """pos_embed: [1, H, W, C] -> [1, h, w, C], bicubic with antialiasing (as timm's SAM port)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", antialias=True, align_corners=False
    )
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


class ClipHead(nn.Module):
    """Transformer blocks (copies of the backbone's last block), pooling, LayerNorm, 2-hidden-layer MLP."""

    def __init__(
        self,
        last_block: nn.Module,
        width: int,
        embed_dim: int,
        depth: int = 3,
        pooling: Literal["max", "avg"] = "max",
        mlp_hidden: int = 1024,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(last_block) for _ in range(depth))
        self.pooling = pooling
        hidden = mlp_hidden
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, embed_dim)
        )

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, h, w, C] backbone tokens -> [B, h, w, C] after the head's blocks."""
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, h, w, C] -> [B, D] (not normalised)."""
        t = self.tokens(x).flatten(1, 2)
        pooled = t.amax(dim=1) if self.pooling == "max" else t.mean(dim=1)
        return self.mlp(self.norm(pooled))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, h, w, C] -> [B, h, w, D] per-patch features (not normalised)."""
        return self.mlp(self.norm(self.tokens(x)))


@dataclass
class PromptBatch:
    """N prompts over a batch of images, in the 1024 px frame.

    image_index: long [N]; structure: long [N] (index into PROMPT_STRUCTURES); boxes: float [N, 4];
    points: float [N, n, 2]; labels: int [N, n] (unused parts of a prompt hold zeros).
    """

    image_index: torch.Tensor
    structure: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> "PromptBatch":
        return PromptBatch(*(t.to(device) for t in dataclasses.astuple(self)))


def _predict_masks(
    dec: MaskDecoder, src: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`MaskDecoder.predict_masks` with one image embedding per prompt (src: [N, C, h, w])
    instead of one image for all prompts. -> masks [N, 1 + 3, 4h, 4w], IoU [N, 1 + 3]."""
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
    src = src + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src, pos_src, tokens)
    iou_token_out, mask_tokens_out = hs[:, 0, :], hs[:, 1 : (1 + dec.num_mask_tokens), :]
    upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return masks, dec.iou_prediction_head(iou_token_out)


class SamClip(nn.Module):
    def __init__(
        self,
        sam: Sam,
        embed_dim: int,
        head_depth: int = 3,
        pooling: Literal["max", "avg"] = "max",
        mlp_hidden: int = 1024,
    ):
        super().__init__()
        enc = sam.image_encoder
        self.patch_embed, self.pos_embed, self.blocks = enc.patch_embed, enc.pos_embed, enc.blocks
        self.patch_size = enc.patch_embed.proj.stride[0]
        width = enc.pos_embed.shape[-1]
        self.clip_head = ClipHead(enc.blocks[-1], width, embed_dim, head_depth, pooling, mlp_hidden)
        self.neck, self.mask_decoder, self.prompt_encoder = enc.neck, sam.mask_decoder, sam.prompt_encoder
        # A SAM loaded as a teacher comes frozen: the student trains all of it but the prompt encoder
        # (the trainer's stages freeze more).
        self.requires_grad_(True)
        self.prompt_encoder.requires_grad_(False)
        self.register_buffer("pixel_mean", sam.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.clone(), persistent=False)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] normalised pixels, S a multiple of 16 -> tokens [B, S/16, S/16, C]."""
        x = self.patch_embed(x)
        x = x + resample_pos_embed(self.pos_embed, tuple(x.shape[1:3]))
        for blk in self.blocks:
            x = blk(x)
        return x

    def clip_embed(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, 3, S, S] -> [B, D], L2-normalised (pass `tokens` to reuse a backbone pass)."""
        tokens = self.backbone(x) if tokens is None else tokens
        return F.normalize(self.clip_head(tokens), dim=-1)

    def clip_dense(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, 3, S, S] -> [B, S/16, S/16, D], L2-normalised per patch."""
        tokens = self.backbone(x) if tokens is None else tokens
        return F.normalize(self.clip_head.dense(tokens), dim=-1)

    def sam_embed(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, 3, 1024, 1024] (SAM-preprocessed) -> image embeddings [B, 256, 64, 64]."""
        tokens = self.backbone(x) if tokens is None else tokens
        return self.neck(tokens.permute(0, 3, 1, 2))

    def decode_prompts(
        self,
        embeddings: torch.Tensor,
        prompts: PromptBatch,
        multimask: bool = False,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched decoding: N prompts over B images in one decoder call per prompt structure.

        embeddings: [B, C, 64, 64] -> low-res logits [N, M, 256, 256] and IoU [N, M], M = 3 with
        `multimask` else 1. mask_inputs: optional [N, 1, 256, 256] logits, SAM's mask prompt.
        SAM's `predict_masks` repeats one image's embedding per prompt, so it takes one image per
        call; here each prompt gathers its own image's embedding instead.
        Prompts of different structure are never padded into one call (that changes the logits).
        """
        n, m = len(prompts.image_index), num_masks(multimask)
        dec = self.mask_decoder
        low = embeddings.new_zeros((n, m, 4 * embeddings.shape[-2], 4 * embeddings.shape[-1]))
        iou = embeddings.new_zeros((n, m))
        image_pe = self.prompt_encoder.get_dense_pe()
        for code in prompts.structure.unique().tolist():
            idx = (prompts.structure == code).nonzero().squeeze(1)
            has_box, has_points = STRUCTURE_PARTS[code]
            sparse, dense = self.prompt_encoder(
                points=(prompts.points[idx], prompts.labels[idx]) if has_points else None,
                boxes=prompts.boxes[idx] if has_box else None,
                masks=mask_inputs[idx] if mask_inputs is not None else None,
            )
            masks, pred = _predict_masks(dec, embeddings[prompts.image_index[idx]], image_pe, sparse, dense)
            keep = slice(1, None) if multimask else slice(0, 1)
            low = low.index_copy(0, idx, masks[:, keep].to(low.dtype))
            iou = iou.index_copy(0, idx, pred[:, keep].to(iou.dtype))
        return low, iou

    def forward(
        self,
        clip_images: torch.Tensor | None = None,
        sam_images: torch.Tensor | None = None,
        sam_input_hw: torch.Tensor | None = None,
        prompts: PromptBatch | None = None,
        multimask: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One call for both tasks, so that DDP sees every trained parameter in one forward.

        clip_images: uint8 [B, 3, S, S] -> "clip" [B, D]; sam_images: uint8 [B', 3, 1024, 1024]
        (resized image top-left, `sam_input_hw` [B', 2] its size) with `prompts` -> "masks"
        [N, M, 256, 256] and "iou" [N, M].
        """
        out = {}
        if clip_images is not None:
            out["clip"] = self.clip_embed(self.normalize(clip_images))
        if sam_images is not None:
            embeddings = self.sam_embed(self.sam_preprocess(sam_images, sam_input_hw))
            out["masks"], out["iou"] = self.decode_prompts(embeddings, prompts, multimask)
        return out

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, S, S] -> SAM-normalised float [B, 3, S, S]."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def sam_preprocess(self, images: torch.Tensor, input_hw: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, 1024, 1024] with the resized image top-left -> `Sam.preprocess` of it:
        normalised inside `input_hw`, zero (the padding) outside."""
        x = self.normalize(images)
        rows = torch.arange(x.shape[-2], device=x.device)
        cols = torch.arange(x.shape[-1], device=x.device)
        inside = (rows[None, :, None] < input_hw[:, 0, None, None]) & (cols[None, None, :] < input_hw[:, 1, None, None])
        return x * inside[:, None].to(x.dtype)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_counts(self) -> dict[str, int]:
        def count(*mods: nn.Module) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        return {
            "backbone": count(self.patch_embed, self.blocks) + self.pos_embed.numel(),
            "clip_head": count(self.clip_head),
            "sam_head": count(self.neck, self.mask_decoder),
            "prompt_encoder_frozen": count(self.prompt_encoder),
        }
