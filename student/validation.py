"""Held-out validation: what the student learned, measured in ways random teachers cannot flatter.

CLIP side (a random CLIP tower maps different images to similar directions: over 48 real photos
a random ViT-B-32 gives a mean pairwise cosine of 0.63, -0.01 after subtracting the mean
embedding, so plain cosine flatters a student that outputs the mean):
- retrieval top-1: does the student's embedding of a held-out image find that image's teacher
  embedding among all held-out ones? Chance is 1/N.
- centred cosine: cosine after subtracting the held-out set's mean teacher embedding (an unbiased
  estimate of the store's mean).
SAM side: agreement of the student's low-res logits with the cached teacher logits for the
stored prompts of held-out images: per-mask Pearson correlation and soft IoU of the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from storage_schemas.pixels.views import render_view
from storage_schemas.store import TargetStore
from storage_schemas.store.commit import CommitRecord
from student.data.batches import collate_sam, sam_item, target_logits
from student.data.unit_samples import Keep, choose_prompts, iter_clip_unit, iter_sam_unit
from student.metrics import mask_iou
from student.modeling.model import SamClip


@dataclass
class ClipHeldOut:
    images: torch.Tensor  # uint8 [N, 3, S, S], view 0 (the canonical evaluation view)
    targets: torch.Tensor  # float32 [N, D], the teacher's view-0 embeddings
    mean: torch.Tensor  # float32 [D], mean teacher embedding over the set's views


def load_clip_held_out(
    store: TargetStore,
    units: list[CommitRecord],
    keep: Keep,
    limit: int,
    resolution: int,
    storage_options: dict | None = None,
) -> ClipHeldOut | None:
    """The first `limit` held-out samples found, units in order (reads units until it has them)."""
    images, targets, all_views = [], [], []
    for s in islice((s for r in units for s in iter_clip_unit(store, r, keep, storage_options)), limit):
        images.append(
            torch.from_numpy(render_view(s.image(resolution), s.crops[0], bool(s.flips[0]), resolution)).permute(
                2, 0, 1
            )
        )
        targets.append(torch.tensor(s.embeddings[0], dtype=torch.float32))
        all_views.append(torch.tensor(s.embeddings, dtype=torch.float32))
    if len(images) < 2:
        return None
    return ClipHeldOut(torch.stack(images), torch.stack(targets), torch.cat(all_views).mean(0))


def load_sam_held_out(
    store: TargetStore,
    units: list[CommitRecord],
    keep: Keep,
    *,
    limit: int,
    prompts: int,
    seed: int,
    storage_options: dict | None = None,
) -> list[dict[str, Any]]:
    """One collated batch per held-out image (the first `limit` found), with P' stored prompts each."""
    images = islice((s for r in units for s in iter_sam_unit(store, r, keep, storage_options)), limit)
    return [
        collate_sam([sam_item(s, choose_prompts(seed, 0, s.identity, len(s.prompts.structure), prompts))])
        for s in images
    ]


@torch.no_grad()
def clip_metrics(model: SamClip, held: ClipHeldOut, batch_size: int, device: torch.device) -> dict[str, float]:
    student = torch.cat(
        [
            model(clip_images=held.images[i : i + batch_size].to(device))["clip"].float().cpu()
            for i in range(0, len(held.images), batch_size)
        ]
    )
    return embedding_metrics(student, held.targets, held.mean)


def embedding_metrics(student: torch.Tensor, teacher: torch.Tensor, mean: torch.Tensor) -> dict[str, float]:
    """student, teacher: [N, D]; mean: [D]."""
    teacher = F.normalize(teacher, dim=-1)
    student = F.normalize(student, dim=-1)
    top1 = (student @ teacher.T).argmax(dim=1) == torch.arange(len(student))
    return {
        "retrieval_top1": top1.float().mean().item(),
        "chance": 1.0 / len(student),
        "cosine": F.cosine_similarity(student, teacher).mean().item(),
        "centred_cosine": F.cosine_similarity(student - mean, teacher - mean).mean().item(),
    }


@torch.no_grad()
def sam_metrics(model: SamClip, held: list[dict[str, Any]], multimask: bool, device: torch.device) -> dict[str, float]:
    """Agreement with the teacher's low-res logits, averaged over masks: Pearson correlation, soft
    IoU of the probabilities, and IoU of the masks (logit > 0)."""
    corr, soft_iou, hard_iou = [], [], []
    for b in held:
        out = model(
            sam_images=b["images"].to(device),
            sam_input_hw=b["input_hw"].to(device),
            prompts=b["prompts"].to(device),
            multimask=multimask,
        )
        a, t = out["masks"].float().cpu(), target_logits(b, "cpu")
        corr.append(logit_correlation(a.flatten(2), t.flatten(2)))
        pa, pt = torch.sigmoid(a.flatten(2)), torch.sigmoid(t.flatten(2))
        soft_iou.append(torch.minimum(pa, pt).sum(-1) / torch.maximum(pa, pt).sum(-1))
        hard_iou.append(mask_iou(a > 0, t > 0))
    if not held:
        return {}
    return {
        "logit_corr": torch.cat(corr).mean().item(),
        "soft_iou": torch.cat(soft_iou).mean().item(),
        "mask_iou": torch.cat(hard_iou).mean().item(),
    }


def logit_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over the last axis: [..., P] x [..., P] -> [...]."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
