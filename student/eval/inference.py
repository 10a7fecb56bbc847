"""Using a trained student: zero-shot classification, semantic segmentation, SAM prompts.

    predictor = SamClipPredictor.load("out/train/export", text=StoreText(open_store("out/store"), "sample"))
    probs = predictor.classify([pil_image], ["cat", "rocket"])           # [B, C]
    seg = predictor.segment(rgb, ["cat", "grass"])                       # 448 px, CLIP head only
    seg = predictor.segment(rgb, ["cat", "grass"], refine=True)          # 1024 px, CLIP then SAM head
    masks, iou, low_res = predictor.segment_prompts(rgb, boxes=[[x0, y0, x1, y1]])

Class names are embedded by `text` (a store's text table, `StoreText`, or a text tower,
`TextTower`); a `ClassNames` can be passed instead of names.

Images are RGB (PIL or uint8 [H, W, 3]); boxes and points are in their pixels, and masks come back
at their size. CLIP-side inputs are rendered by `storage_schemas.pixels.views.render_view` (what the
student trained on); SAM-side inputs are exactly `SamPredictor`'s (`storage_schemas.pixels.sam_transforms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from storage_schemas.pixels.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.pixels.views import canonical_crop, render_view
from storage_schemas.store.tables import PROMPT_STRUCTURES
from student.eval.zero_shot import ClassNames
from student.modeling.load import load_student
from student.modeling.model import PromptBatch, SamClip

ImageLike = Union[Image.Image, np.ndarray]
Classes = Union[ClassNames, Sequence[str]]
SEMSEG_SIZE = 448  # the zero-shot segmentation protocol's input (paper section 4.2)
REFINE_SIZE = 1024
POINTS = PROMPT_STRUCTURES.index("points")
PROB_EPS = 1e-4  # probabilities clamped before their logit: SAM's own mask logits stay within about +-10


def as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """logits: [C, h, w] -> [C, H, W], bilinear (the protocol's linear upscaling)."""
    return F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def postprocess_masks(low_res: torch.Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
    """`Sam.postprocess_masks`: low_res [N, M, 256, 256] -> logits [N, M, H, W] at the original size."""
    x = F.interpolate(low_res.float(), (REFINE_SIZE, REFINE_SIZE), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(x, original_hw, mode="bilinear", align_corners=False)


def upsampled_argmax(
    scores: torch.Tensor,
    upsample: Callable[[torch.Tensor], torch.Tensor],
    chunk: int = 16,
    bg_threshold: float | None = None,
) -> np.ndarray:
    """argmax over classes of upsample(scores) without holding every class at full size:
    scores [C, h, w] -> int64 [H, W], `chunk` classes at a time.

    bg_threshold: the scores are of foreground classes only; a pixel whose top softmax probability
    is below it is background (0), the others are their class + 1 (GroupViT's and TCL's protocol).
    """
    best_value, best, total = None, None, None  # total: logsumexp over the classes so far
    for start in range(0, scores.shape[0], chunk):
        up = upsample(scores[start : start + chunk])
        value, index = up.max(dim=0)
        lse = torch.logsumexp(up, dim=0)
        if best is None:
            best_value, best, total = value, index, lse
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best = torch.where(better, index + start, best)
            total = torch.logaddexp(total, lse)
    if bg_threshold is None:
        return best.numpy()
    confident = (best_value - total).exp() >= bg_threshold
    return torch.where(confident, best + 1, torch.zeros_like(best)).numpy()


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """mmsegmentation's slide inference: window offsets covering `length`, the last flush with the end."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, max(length - crop, 0)) for i in range(n)})


def refine_prompts(
    probs: torch.Tensor, input_hw: tuple[int, int], threshold: float, max_points: int, seed: int
) -> dict[int, np.ndarray]:
    """Point prompts from the CLIP head's probabilities probs: [C, 64, 64] over the 1024 frame.

    Per class with a patch above `threshold` whose centre lies inside the image: 1..`max_points`
    points [k, 2] (x, y: patch centres in the 1024 frame), drawn without replacement with weight =
    probability.
    """
    if max_points < 1:
        raise ValueError(f"max_points: expected at least 1, got {max_points}")
    cell = REFINE_SIZE // probs.shape[-1]
    inside = [-(-(2 * s - cell) // (2 * cell)) for s in input_hw]  # patches whose centre is in the image
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for c in range(probs.shape[0]):
        p = probs[c, : inside[0], : inside[1]]
        confident = (p > threshold).flatten().nonzero().squeeze(1)
        if len(confident) == 0:
            continue
        weights = p.flatten()[confident].clamp_min(1e-12)  # a softmax can underflow to 0
        pick = confident[torch.multinomial(weights, min(max_points, len(confident)), replacement=False, generator=gen)]
        rows, cols = pick // p.shape[1], pick % p.shape[1]
        out[c] = torch.stack([(cols + 0.5) * cell, (rows + 0.5) * cell], dim=1).numpy().astype(np.float32)
    return out


def mask_prompt(probs: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """probs: [N, 64, 64] -> SAM's mask prompt [N, 1, 256, 256]: logits of the probabilities,
    bilinear to 256 x 256, and confidently "not the object" over the padding."""
    low = F.interpolate(probs[:, None].float(), scale_factor=4, mode="bilinear", align_corners=False)
    logits = torch.logit(low.clamp(PROB_EPS, 1 - PROB_EPS))
    h, w = (-(-s * low.shape[-1] // REFINE_SIZE) for s in input_hw)
    outside = torch.ones(low.shape[-2:], dtype=torch.bool)
    outside[:h, :w] = False
    logits[..., outside] = math.log(PROB_EPS / (1 - PROB_EPS))
    return logits


def check_prompts(boxes, points, labels) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """segment_prompts' inputs as arrays of agreeing shapes, or a ValueError that says which is off."""
    if boxes is None and points is None:
        raise ValueError("segment_prompts needs boxes, points or both")
    box_arr = None if boxes is None else np.asarray(boxes, np.float64)
    if box_arr is not None and (box_arr.ndim != 2 or box_arr.shape[1] != 4):
        raise ValueError(f"boxes: expected [N, 4] (x0, y0, x1, y1), got shape {box_arr.shape}")
    if points is None:
        if labels is not None:
            raise ValueError("labels given without points")
        return box_arr, None, None
    pts = np.asarray(points, np.float64)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"points: expected [N, n, 2] (x, y; N prompts of n points), got shape {pts.shape}")
    if box_arr is not None and len(box_arr) != len(pts):
        raise ValueError(f"boxes and points: {len(box_arr)} and {len(pts)} prompts, expected the same number")
    lab = np.ones(pts.shape[:2], np.int64) if labels is None else np.asarray(labels, np.int64)
    if lab.shape != pts.shape[:2]:
        raise ValueError(f"labels: expected shape {pts.shape[:2]} (one per point), got {lab.shape}")
    return box_arr, pts, lab


@dataclass
class Segmentation:
    labels: np.ndarray  # int64 [H, W], index into the class names
    coarse_labels: np.ndarray  # int64 [H, W], the CLIP head's own prediction
    points: dict[int, np.ndarray]  # refine only: class -> [k, 2] (x, y) point prompts in image pixels


class SamClipPredictor:
    def __init__(
        self, model: SamClip, device: str | torch.device = "cpu", text: Callable[[list[str]], ClassNames] | None = None
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.text = text
        self._class_names: dict[tuple[str, ...], ClassNames] = {}

    @classmethod
    def load(
        cls, export_dir: str, device: str = "cpu", text: Callable[[list[str]], ClassNames] | None = None
    ) -> "SamClipPredictor":
        return cls(load_student(export_dir, device), device, text)

    def class_names(self, classes: Classes) -> ClassNames:
        if isinstance(classes, ClassNames):
            return classes
        key = tuple(classes)
        if key not in self._class_names:
            if self.text is None:
                raise ValueError(
                    "class names need a text source: SamClipPredictor(..., text=StoreText(...) or "
                    "TextTower(...)), or pass a ClassNames"
                )
            self._class_names[key] = self.text(list(key))
        return self._class_names[key]

    def _pixels(self, views: list[np.ndarray]) -> torch.Tensor:
        """uint8 [H, W, 3] views -> SAM-normalised float [B, 3, H, W] on the device."""
        x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).to(self.device)
        return self.model.normalize(x)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageLike], size: int = 224, batch_size: int = 32) -> torch.Tensor:
        """Image embeddings [B, D] (L2-normalised) of the centre crop at `size` px (open_clip's
        evaluation crop, rendered as view 0 is)."""
        out = []
        for i in range(0, len(images), batch_size):
            views = []
            for im in map(as_pil, images[i : i + batch_size]):
                views.append(render_view(im, canonical_crop(im.width, im.height, size), False, size))
            out.append(self.model.clip_embed(self._pixels(views)).float().cpu())
        return torch.cat(out)

    def classify(self, images: Sequence[ImageLike], classes: Classes, size: int = 224) -> torch.Tensor:
        """Zero-shot class probabilities [B, C]."""
        return self.class_names(classes).logits(self.embed_images(images, size)).softmax(dim=-1)

    @torch.no_grad()
    def dense_scores(self, images: Sequence[ImageLike], classes: Classes, size: int = SEMSEG_SIZE) -> torch.Tensor:
        """The protocol's coarse logits, one backbone call for the batch: each image squashed to
        size x size, per-patch CLIP-head features against the class embeddings
        -> [B, C, size/16, size/16] (cosines x logit scale)."""
        views = [render_view(as_pil(im), (0.0, 0.0, 1.0, 1.0), False, size) for im in images]
        dense = self.model.clip_dense(self._pixels(views)).float().cpu()  # [B, h, w, D]
        return self.class_names(classes).logits(dense).permute(0, 3, 1, 2)

    def segment_batch(
        self, images: Sequence[ImageLike], classes: Classes, bg_threshold: float | None = None
    ) -> list[Segmentation]:
        """`segment` without refinement or sliding window, the backbone run once for the batch."""
        ims = [as_pil(im) for im in images]
        scores = self.dense_scores(ims, classes)
        out = []
        for im, s in zip(ims, scores):
            hw = (im.height, im.width)
            labels = upsampled_argmax(s, lambda x: upsample_logits(x, hw), bg_threshold=bg_threshold)
            out.append(Segmentation(labels, labels, {}))
        return out

    @torch.no_grad()
    def slide_scores(self, image: ImageLike, classes: Classes, crop: int, stride: int) -> torch.Tensor:
        """Sliding-window logits [C, H', W'] over the image resized to a short side of `crop` px:
        crop x crop windows `stride` apart, each window's logits upsampled to its pixels and the
        overlaps averaged (TCL's 448 / 224)."""
        im = as_pil(image)
        scale = crop / min(im.width, im.height)
        w, h = max(crop, round(im.width * scale)), max(crop, round(im.height * scale))
        classes = self.class_names(classes)
        total = torch.zeros(len(classes), h, w)
        count = torch.zeros(h, w)
        for y in window_starts(h, crop, stride):
            for x in window_starts(w, crop, stride):
                box = (x / w, y / h, (x + crop) / w, (y + crop) / h)
                view = render_view(im, box, False, crop)
                dense = self.model.clip_dense(self._pixels([view]))[0].float().cpu()  # [h, w, D]
                logits = classes.logits(dense).permute(2, 0, 1)
                total[:, y : y + crop, x : x + crop] += upsample_logits(logits, (crop, crop))
                count[y : y + crop, x : x + crop] += 1
        return total / count

    @torch.no_grad()
    def segment(
        self,
        image: ImageLike,
        classes: Classes,
        refine: bool = False,
        threshold: float = 0.5,
        max_points: int = 3,
        seed: int = 0,
        slide: tuple[int, int] | None = None,
        bg_threshold: float | None = None,
    ) -> Segmentation:
        """Zero-shot semantic segmentation at the image's size.

        refine=False: 448 px, CLIP head only (the paper's section 4.2 protocol).
        refine=True: appendix B; one backbone pass at 1024 px gives the CLIP head's per-class
        probabilities and the SAM head's image embedding; each class with a patch above `threshold`
        gets its probability map as a mask prompt (logits at 256 x 256) plus 1..`max_points` points
        drawn where it exceeds the threshold (weighted by the probability); each pixel takes the
        prompted class with the highest SAM-head logit (as appendix B: a class without a confident
        patch cannot win, and a single prompted class takes the whole image). With no class above
        the threshold anywhere, the CLIP head's prediction stands.

        slide=(crop, stride): the CLIP head's logits by sliding window (`slide_scores`) instead of
        the whole image squashed to 448 px. bg_threshold: `classes` are foreground classes only;
        labels are 0 for background (top probability below the threshold) and class + 1 elsewhere.
        """
        im = as_pil(image)
        classes = self.class_names(classes)
        hw = (im.height, im.width)
        if not refine and not slide:
            return self.segment_batch([im], classes, bg_threshold)[0]
        if not refine:
            scores = self.slide_scores(im, classes, *slide)
            coarse = upsampled_argmax(scores, lambda x: upsample_logits(x, hw), bg_threshold=bg_threshold)
            return Segmentation(coarse, coarse, {})
        if slide or bg_threshold is not None:
            raise ValueError("refine=True takes neither slide nor bg_threshold (the SAM head decides every pixel)")
        resized = sam_input_image(np.asarray(im))
        input_hw = resized.shape[:2]
        x = self.model.sam_preprocess(
            torch.from_numpy(pad_image(resized)).permute(2, 0, 1)[None].to(self.device),
            torch.tensor([input_hw], device=self.device),
        )
        tokens = self.model.backbone(x)  # the one backbone pass
        scores = classes.logits(self.model.clip_dense(x, tokens)[0].float().cpu()).permute(2, 0, 1)  # [C, 64, 64]
        coarse = upsampled_argmax(scores, lambda x: postprocess_masks(x[None], input_hw, hw)[0])
        probs = scores.softmax(dim=0)
        prompts = refine_prompts(probs, input_hw, threshold, max_points, seed)
        if not prompts:
            return Segmentation(coarse, coarse, {})
        embedding = self.model.sam_embed(x, tokens)
        cls_ids = sorted(prompts)
        logits = torch.empty(len(cls_ids), *hw)
        # One decoder call per point count: padding a prompt with "not a point" entries changes its masks.
        for k in sorted({len(prompts[c]) for c in cls_ids}):
            rows = [i for i, c in enumerate(cls_ids) if len(prompts[c]) == k]
            ids = [cls_ids[i] for i in rows]
            n = len(ids)
            batch = PromptBatch(
                torch.zeros(n, dtype=torch.long),
                torch.full((n,), POINTS),
                torch.zeros(n, 4),
                torch.from_numpy(np.stack([prompts[c] for c in ids])),
                torch.ones(n, k, dtype=torch.long),
            ).to(self.device)
            low, _ = self.model.decode_prompts(
                embedding, batch, False, mask_prompt(probs[ids], input_hw).to(self.device)
            )
            logits[rows] = postprocess_masks(low.cpu(), input_hw, hw)[:, 0]
        labels_map = np.asarray(cls_ids)[logits.argmax(dim=0).numpy()]
        to_image = np.array([hw[1] / input_hw[1], hw[0] / input_hw[0]], np.float32)
        return Segmentation(labels_map, coarse, {c: prompts[c] * to_image for c in cls_ids})

    @torch.no_grad()
    def segment_prompts(
        self,
        image: ImageLike,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """The SAM head, as `SamPredictor.predict` batched over prompts.

        boxes: [N, 4] x0, y0, x1, y1; points: [N, n, 2] x, y; labels: [N, n] (1 foreground,
        0 background; default all 1), in the image's pixels. -> masks bool [N, M, H, W],
        predicted IoU [N, M], low-res logits [N, M, 256, 256]; M = 3 with `multimask`.
        """
        box_arr, pts, lab_arr = check_prompts(boxes, points, labels)
        rgb = np.asarray(as_pil(image))
        hw = rgb.shape[:2]
        resized = sam_input_image(rgb)
        n = len(box_arr) if box_arr is not None else len(pts)
        b = torch.zeros(n, 4)
        p, lab = torch.zeros(n, 1, 2), torch.zeros(n, 1, dtype=torch.long)
        if box_arr is not None:
            b = torch.from_numpy(sam_boxes(box_arr, hw)).float()
        if pts is not None:
            p = torch.from_numpy(sam_points(pts, hw)).float()
            lab = torch.from_numpy(lab_arr)
        structure = 2 if boxes is not None and points is not None else (0 if boxes is not None else 1)
        batch = PromptBatch(torch.zeros(n, dtype=torch.long), torch.full((n,), structure), b, p, lab).to(self.device)
        out = self.model(
            sam_images=torch.from_numpy(pad_image(resized)).permute(2, 0, 1)[None].to(self.device),
            sam_input_hw=torch.tensor([resized.shape[:2]], device=self.device),
            prompts=batch,
            multimask=multimask,
        )
        low = out["masks"].float().cpu()
        masks = postprocess_masks(low, resized.shape[:2], hw) > 0.0
        return masks.numpy(), out["iou"].float().cpu().numpy(), low
