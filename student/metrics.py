"""Evaluation metrics: top-k accuracy, segmentation mIoU, mask IoU.

mIoU follows the usual semantic-segmentation protocol (mmseg, the paper's baselines): one confusion
matrix accumulated over the whole dataset, pixels labelled `ignore` (255: VOC's object borders)
left out, IoU_c = TP / (TP + FP + FN) per class, and the mean over the classes that occur in the
labels or the predictions of the dataset (a class absent from both has no IoU, not 0 or 1).
"""

from __future__ import annotations

import numpy as np
import torch

from storage_schemas.datasets.segmentation import IGNORE as IGNORE_LABEL  # the label sets' own


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """logits: [B, C], target: long [B] -> {k: how many targets are among the k highest logits}."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices  # [B, kmax]
    hit = pred == target[:, None]
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def confusion_matrix(pred: np.ndarray, label: np.ndarray, n_classes: int, ignore: int = IGNORE_LABEL) -> np.ndarray:
    """pred, label: int [H, W] -> int64 [C, C], rows = label, columns = prediction."""
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    keep = label != ignore
    lab, prd = label[keep].astype(np.int64), pred[keep].astype(np.int64)
    if lab.size and (lab.max() >= n_classes or lab.min() < 0):
        raise ValueError(
            f"label values {sorted(set(np.unique(lab)) - set(range(n_classes)))} are not classes "
            f"0..{n_classes - 1} nor the ignore label {ignore}"
        )
    return np.bincount(lab * n_classes + prd, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """conf: [C, C] -> float64 [C]; NaN for a class neither labelled nor predicted."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a, b: bool [..., H, W] -> [...]; two empty masks agree (IoU 1)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
