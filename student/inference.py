"""Using a trained student: zero-shot classification, semantic segmentation, SAM prompts.

    predictor = SamClipPredictor.load("out/train/export", text=StoreText(open_store("out/store"), "sample"))
    probs = predictor.classify([pil_image], ["cat", "rocket"])           # [B, C]
    seg = predictor.segment(rgb, ["cat", "grass"])                       # 448 px, CLIP head only
    seg = predictor.segment(rgb, ["cat", "grass"], refine=True)          # 1024 px, CLIP then SAM head
    masks, iou, low_res = predictor.segment_prompts(rgb, boxes=[[x0, y0, x1, y1]])

Class names are embedded by `text` (a store's text table, `StoreText`, or a text tower,
`TextTower`); a `ClassNames` can be passed instead of names.

Images are RGB (PIL or uint8 [H, W, 3]); boxes and points are in their pixels, and masks come back
at their size. CLIP-side inputs are rendered by `storage_schemas.views.render_view` (what the
student trained on); SAM-side inputs are exactly `SamPredictor`'s (`storage_schemas.sam_transforms`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from storage_schemas.sam_transforms import pad_image, sam_boxes, sam_input_image, sam_points
from storage_schemas.tables import PROMPT_STRUCTURES
from storage_schemas.views import canonical_crop, render_view
from student.export import load_student
from student.model import PromptBatch, SamClip
from student.zero_shot import ClassNames

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


def refine_prompts(probs: torch.Tensor, input_hw: tuple[int, int], threshold: float, max_points: int,
                   seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Point prompts from the CLIP head's probabilities probs: [C, 64, 64] over the 1024 frame.

    Per class with a patch above `threshold` inside the image: points [max_points, 2] (x, y, patch
    centres in the 1024 frame) drawn without replacement with weight = probability, and labels
    [max_points] (1 for a drawn point, -1, SAM's "not a point", where fewer patches qualify).
    """
    cell = REFINE_SIZE // probs.shape[-1]
    valid = [-(-s // cell) for s in input_hw]  # patches that overlap the image
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for c in range(probs.shape[0]):
        p = probs[c, : valid[0], : valid[1]]
        confident = (p > threshold).flatten().nonzero().squeeze(1)
        if len(confident) == 0:
            continue
        k = min(max_points, len(confident))
        pick = confident[torch.multinomial(p.flatten()[confident], k, replacement=False, generator=gen)]
        rows, cols = pick // p.shape[1], pick % p.shape[1]
        xy = np.zeros((max_points, 2), np.float32)
        xy[:k] = torch.stack([(cols + 0.5) * cell, (rows + 0.5) * cell], dim=1).numpy()
        labels = np.full(max_points, -1, np.int64)
        labels[:k] = 1
        out[c] = (xy, labels)
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


@dataclass
class Segmentation:
    labels: np.ndarray  # int64 [H, W], index into the class names
    coarse_labels: np.ndarray  # int64 [H, W], the CLIP head's own prediction
    coarse_probs: torch.Tensor  # float32 [C, H, W], softmax over classes of the CLIP head's scores
    points: dict[int, np.ndarray]  # refine only: class -> [n, 2] (x, y) point prompts in image pixels


class SamClipPredictor:
    def __init__(self, model: SamClip, device: str | torch.device = "cpu",
                 text: Callable[[list[str]], ClassNames] | None = None):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.text = text
        self._class_names: dict[tuple[str, ...], ClassNames] = {}

    @classmethod
    def load(cls, export_dir: str, device: str = "cpu",
             text: Callable[[list[str]], ClassNames] | None = None) -> "SamClipPredictor":
        return cls(load_student(export_dir, device), device, text)

    def class_names(self, classes: Classes) -> ClassNames:
        if isinstance(classes, ClassNames):
            return classes
        key = tuple(classes)
        if key not in self._class_names:
            if self.text is None:
                raise ValueError("class names need a text source: SamClipPredictor(..., text=StoreText(...) or "
                                 "TextTower(...)), or pass a ClassNames")
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
            for im in map(as_pil, images[i:i + batch_size]):
                views.append(render_view(im, canonical_crop(im.width, im.height, size), False, size))
            out.append(self.model.clip_embed(self._pixels(views)).float().cpu())
        return torch.cat(out)

    def classify(self, images: Sequence[ImageLike], classes: Classes, size: int = 224) -> torch.Tensor:
        """Zero-shot class probabilities [B, C]."""
        return self.class_names(classes).logits(self.embed_images(images, size)).softmax(dim=-1)

    @torch.no_grad()
    def dense_scores(self, image: ImageLike, classes: Classes, size: int = SEMSEG_SIZE) -> torch.Tensor:
        """The protocol's coarse logits: the image squashed to size x size, per-patch CLIP-head
        features against the class embeddings -> [C, size/16, size/16] (cosines x logit scale)."""
        view = render_view(as_pil(image), (0.0, 0.0, 1.0, 1.0), False, size)
        dense = self.model.clip_dense(self._pixels([view]))[0].float().cpu()  # [h, w, D]
        return self.class_names(classes).logits(dense).permute(2, 0, 1)

    @torch.no_grad()
    def segment(self, image: ImageLike, classes: Classes, refine: bool = False, threshold: float = 0.5,
                max_points: int = 3, seed: int = 0) -> Segmentation:
        """Zero-shot semantic segmentation at the image's size.

        refine=False: 448 px, CLIP head only (the paper's section 4.2 protocol).
        refine=True: appendix B; one backbone pass at 1024 px gives the CLIP head's per-class
        probabilities and the SAM head's image embedding; each class with a patch above `threshold`
        gets its probability map as a mask prompt (logits at 256 x 256) plus 1..`max_points` points
        drawn where it exceeds the threshold (weighted by the probability); the SAM head's logits
        are compared per pixel across those classes. With no class above the threshold anywhere,
        the CLIP head's prediction stands.
        """
        im = as_pil(image)
        classes = self.class_names(classes)
        hw = (im.height, im.width)
        if not refine:
            probs = upsample_logits(self.dense_scores(im, classes), hw).softmax(dim=0)
            coarse = probs.argmax(dim=0).numpy()
            return Segmentation(coarse, coarse, probs, {})
        resized = sam_input_image(np.asarray(im))
        input_hw = resized.shape[:2]
        x = self.model.sam_preprocess(torch.from_numpy(pad_image(resized)).permute(2, 0, 1)[None].to(self.device),
                                      torch.tensor([input_hw], device=self.device))
        tokens = self.model.backbone(x)  # the one backbone pass
        scores = classes.logits(self.model.clip_dense(x, tokens)[0].float().cpu()).permute(2, 0, 1)  # [C, 64, 64]
        coarse_probs = postprocess_masks(scores[None], input_hw, hw)[0].softmax(dim=0)
        coarse = coarse_probs.argmax(dim=0).numpy()
        probs = scores.softmax(dim=0)
        prompts = refine_prompts(probs, input_hw, threshold, max_points, seed)
        if not prompts:
            return Segmentation(coarse, coarse, coarse_probs, {})
        cls_ids = sorted(prompts)
        points = torch.from_numpy(np.stack([prompts[c][0] for c in cls_ids]))  # [N, n, 2], 1024 frame
        labels = torch.from_numpy(np.stack([prompts[c][1] for c in cls_ids]))
        n = len(cls_ids)
        batch = PromptBatch(torch.zeros(n, dtype=torch.long), torch.full((n,), POINTS), torch.zeros(n, 4),
                            points, labels).to(self.device)
        low, _ = self.model.decode_prompts(self.model.sam_embed(x, tokens), batch, False,
                                           mask_prompt(probs[cls_ids], input_hw).to(self.device))
        logits = postprocess_masks(low.cpu(), input_hw, hw)[:, 0]  # [N, H, W]
        labels_map = np.asarray(cls_ids)[logits.argmax(dim=0).numpy()]
        to_image = np.array([hw[1] / input_hw[1], hw[0] / input_hw[0]])
        drawn = {c: prompts[c][0][prompts[c][1] > 0] * to_image for c in cls_ids}
        return Segmentation(labels_map, coarse, coarse_probs, drawn)

    @torch.no_grad()
    def segment_prompts(self, image: ImageLike, boxes: np.ndarray | None = None, points: np.ndarray | None = None,
                        labels: np.ndarray | None = None, multimask: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """The SAM head, as `SamPredictor.predict` batched over prompts.

        boxes: [N, 4] x0, y0, x1, y1; points: [N, n, 2] x, y; labels: [N, n] (1 foreground,
        0 background; default all 1), in the image's pixels. -> masks bool [N, M, H, W],
        predicted IoU [N, M], low-res logits [N, M, 256, 256]; M = 3 with `multimask`.
        """
        if boxes is None and points is None:
            raise ValueError("segment_prompts needs boxes, points or both")
        rgb = np.asarray(as_pil(image))
        hw = rgb.shape[:2]
        resized = sam_input_image(rgb)
        n = len(boxes) if boxes is not None else len(points)
        b = torch.zeros(n, 4)
        p, lab = torch.zeros(n, 1, 2), torch.zeros(n, 1, dtype=torch.long)
        if boxes is not None:
            b = torch.from_numpy(sam_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), hw)).float()
        if points is not None:
            pts = np.asarray(points, np.float64)
            p = torch.from_numpy(sam_points(pts, hw)).float()
            lab = torch.ones(pts.shape[:2], dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        structure = 2 if boxes is not None and points is not None else (0 if boxes is not None else 1)
        batch = PromptBatch(torch.zeros(n, dtype=torch.long), torch.full((n,), structure), b, p, lab).to(self.device)
        out = self.model(sam_images=torch.from_numpy(pad_image(resized)).permute(2, 0, 1)[None].to(self.device),
                         sam_input_hw=torch.tensor([resized.shape[:2]], device=self.device), prompts=batch,
                         multimask=multimask)
        low = out["masks"].float().cpu()
        masks = postprocess_masks(low, resized.shape[:2], hw) > 0.0
        return masks.numpy(), out["iou"].float().cpu().numpy(), low
