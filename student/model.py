"""SAM-CLIP (paper section 3, appendix A): one SAM ViT backbone, a CLIP head and a SAM head.

    model = SamClip(sam, embed_dim=768)     # sam: a segment_anything Sam with the checkpoint loaded
    emb = model.clip_embed(images_224)                              # [B, D], L2-normalised
    dense = model.clip_dense(images_448)                            # [B, 28, 28, D] per-patch features
    low, iou = model.sam_decode(images_1024, boxes=..., points=...) # [B, N, M, 256, 256], [B, N, M]

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
from typing import Literal

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """pos_embed: [1, H, W, C] -> [1, h, w, C], bicubic with antialiasing (as timm's SAM port)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = F.interpolate(pos_embed.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", antialias=True,
                      align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


class ClipHead(nn.Module):
    """Transformer blocks (copies of the backbone's last block), pooling, LayerNorm, 2-hidden-layer MLP."""

    def __init__(self, last_block: nn.Module, width: int, embed_dim: int, depth: int = 3,
                 pooling: Literal["max", "avg"] = "max", mlp_hidden: int = 1024):
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(last_block) for _ in range(depth))
        self.pooling = pooling
        hidden = mlp_hidden
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))

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


class SamClip(nn.Module):
    def __init__(self, sam: Sam, embed_dim: int, head_depth: int = 3, pooling: Literal["max", "avg"] = "max",
                 mlp_hidden: int = 1024):
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

    def sam_decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None = None,
                   points: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                   multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Several images with N prompts of one structure each.

        embeddings: [B, C, 64, 64]; boxes: [B, N, 4] and/or points: ([B, N, n, 2], [B, N, n]) in the
        1024 frame; masks: [B, N, 1, 256, 256] logits (mask prompts) -> low-res logits
        [B, N, M, 256, 256] and IoU [B, N, M]. `MaskDecoder.predict_masks` repeats its image
        embedding once per prompt, so it decodes one image per call: this loops over images.
        """
        lows, ious = [], []
        for b in range(embeddings.shape[0]):
            sparse, dense = self.prompt_encoder(
                points=None if points is None else (points[0][b], points[1][b]),
                boxes=None if boxes is None else boxes[b],
                masks=None if masks is None else masks[b],
            )
            low, iou = self.mask_decoder(image_embeddings=embeddings[b:b + 1],
                                         image_pe=self.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=multimask)
            lows.append(low)
            ious.append(iou)
        return torch.stack(lows), torch.stack(ious)

    def parameter_counts(self) -> dict[str, int]:
        count = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
        return {
            "backbone": count(self.patch_embed, self.blocks) + self.pos_embed.numel(),
            "clip_head": count(self.clip_head),
            "sam_head": count(self.neck, self.mask_decoder),
            "prompt_encoder_frozen": count(self.prompt_encoder),
        }
