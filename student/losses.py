"""Distillation losses (paper section 3): cosine on the CLIP side, focal + dice (+ IoU MSE) on the SAM side."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from student.config import LossConfig


def clip_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cos, averaged. student: [B, D] (normalised), teacher: [B, D]."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def mask_targets(teacher_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The teacher's soft probabilities or hard mask (logit > 0), float in [0, 1]."""
    return torch.sigmoid(teacher_logits) if kind == "soft" else (teacher_logits > 0).float()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Sigmoid focal loss (as SAM trains with), for soft or hard targets in [0, 1]; mean per mask.

    logits, targets: [N, M, H, W] -> [N, M]. With soft targets the modulating factor is
    |target - p|^gamma, which is focal's (1 - p_t)^gamma when targets are 0 or 1.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce * (targets - p).abs().pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - Dice per mask, in the squared-denominator form (V-Net): logits, targets [N, M, H, W] -> [N, M].

    Its minimum is at p = targets for soft targets too (2 sum pt <= sum p^2 + sum t^2); the
    plain form, 2 sum pt / (sum p + sum t), would push p towards 1 wherever a soft target is > 0.
    For hard targets the two agree (t^2 = t) up to the p^2 term.
    """
    p = torch.sigmoid(logits).flatten(2)
    t = targets.flatten(2)
    return 1.0 - (2 * (p * t).sum(-1) + 1.0) / ((p * p).sum(-1) + (t * t).sum(-1) + 1.0)


def sam_loss(
    logits: torch.Tensor, iou: torch.Tensor, teacher_logits: torch.Tensor, teacher_iou: torch.Tensor, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """logits: [N, M, 256, 256] student low-res; teacher_*: the cached targets. -> the total and its parts."""
    logits, teacher_logits = logits.float(), teacher_logits.float()
    targets = mask_targets(teacher_logits, cfg.targets)
    parts = {
        "focal": focal_loss(logits, targets, cfg.focal_gamma, cfg.focal_alpha).mean(),
        "dice": dice_loss(logits, targets).mean(),
        "iou": F.mse_loss(iou.float(), teacher_iou.float()),
    }
    parts["total"] = cfg.focal * parts["focal"] + cfg.dice * parts["dice"] + cfg.iou * parts["iou"]
    return parts
