"""Forward FLOPs of the teachers a store's manifests name: the work a run on cached targets skips.

    flops = teacher_flops(clip_teacher, sam_teacher, multimask)   # the manifests' must_match["teacher"]
    flops.clip_view     # one view through the CLIP image tower at the teacher's input size
    flops.sam_image     # one image through SAM's image encoder at 1024 px
    flops.sam_prompt    # one prompt through SAM's prompt encoder and mask decoder

Counted by torch's FlopCounterMode (2 FLOPs per multiply-add, matmuls and convolutions) on the
teachers' own classes built on the meta device: exact for any architecture the manifest names,
no weights needed, under a second even for ViT-H. Online distillation would run the CLIP teacher
once per view a student consumes, and SAM's encoder once per image and its decoder once per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from storage_schemas.models.sam_models import build_sam
from storage_schemas.pixels.sam_transforms import IMAGE_SIZE
from storage_schemas.store.manifest import Manifest


@dataclass(frozen=True)
class TeacherFlops:
    clip_view: float = 0.0
    sam_image: float = 0.0
    sam_prompt: float = 0.0

    def of(self, views: int, sam_images: int, sam_prompts: int) -> float:
        """Teacher FLOPs of consuming that many CLIP views, SAM images and SAM prompts."""
        return views * self.clip_view + sam_images * self.sam_image + sam_prompts * self.sam_prompt


def teacher_flops(
    clip_teacher: dict[str, Any] | None, sam_teacher: dict[str, Any] | None, multimask: bool = False
) -> TeacherFlops:
    """From the teachers' fingerprints; `multimask`: the SAM policy's num_masks is 3."""
    clip = clip_view_flops(clip_teacher["arch"], tuple(clip_teacher["preprocess"]["size"])) if clip_teacher else 0.0
    sam = sam_flops(sam_teacher["arch"], multimask) if sam_teacher else (0.0, 0.0)
    return TeacherFlops(clip, *sam)


def manifest_flops(clip: Manifest | None, sam: Manifest | None) -> TeacherFlops:
    """From a store's CLIP and SAM manifests (either may be absent)."""
    return teacher_flops(
        clip.must_match["teacher"] if clip else None,
        sam.must_match["teacher"] if sam else None,
        sam is not None and int(sam.must_match["policy"]["num_masks"]) == 3,
    )


def _counted(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@lru_cache(maxsize=None)
def clip_view_flops(arch: str, size: tuple[int, int]) -> float:
    import open_clip

    from storage_schemas.models.clip_archs import no_weights_warning  # and the project's own architectures

    with torch.device("meta"), no_weights_warning():
        model = open_clip.create_model(arch, pretrained=None, device="meta")
        return _counted(lambda: model.encode_image(torch.zeros(1, 3, *size)))


@lru_cache(maxsize=None)
def sam_flops(arch: str, multimask: bool) -> tuple[float, float]:
    """(image encoder, one box prompt through prompt encoder + mask decoder)."""
    with torch.device("meta"):
        sam = build_sam(arch)
        embedding = torch.zeros(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        encoder = _counted(lambda: sam.image_encoder(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)))

        def decode() -> None:
            sparse, dense = sam.prompt_encoder(points=None, boxes=torch.zeros(1, 4), masks=None)
            sam.mask_decoder(
                image_embeddings=embedding,
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )

        return encoder, _counted(decode)
