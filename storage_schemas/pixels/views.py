"""Replayable CLIP views: crop boxes drawn from stable seeds, and the one function that renders them.

A view is (crop, flip): `crop` = [x0, y0, x1, y1] normalised to the decoded image, `flip` a
horizontal flip. `render_view` crops, resizes to the output size and flips, in one Pillow resize
with a sub-pixel box, so that

  * view 0 (`canonical_crop`) is open_clip's `preprocess_val` (resize the shortest side, centre
    crop): Pillow resamples the same positions with the same filter scale either way, up to the
    crop's rounding to float32 (a few levels at most, under half a level on average; tested);
  * views 1..K-1 (`random_crop`) are torchvision's RandomResizedCrop, drawn from
    `sample_seed(store seed, sample, "view", v)`;
  * the student, rendering a stored (crop, flip) at the teacher's size, gets the teacher's pixels
    exactly (`pixel_hash` checks it), and at 448 or 1024 px the same crop at higher resolution.

Crops are rounded to float32 before rendering, because float32 is what the store keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from storage_schemas.plumbing.identity import SampleId, pixel_hash, sample_seed

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class View:
    index: int
    crop: tuple[float, float, float, float]  # float32-representable, normalised
    flip: bool


def as_float32(box) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in np.asarray(box, dtype=np.float32))


RESIZE_MODES = ("shortest", "squash")  # open_clip's; "longest" pads, which is no crop


def canonical_crop(
    width: int, height: int, size: int, resize_mode: str = "shortest"
) -> tuple[float, float, float, float]:
    """The box that open_clip's preprocess_val keeps.

    shortest: shortest side to `size`, centre crop; mirrors torchvision (Resize(size) gives the
    long side int(size * long / short), CenterCrop offsets round((new - size) / 2)).
    squash: the whole image, resized to size x size.
    """
    if resize_mode == "squash":
        return (0.0, 0.0, 1.0, 1.0)
    if resize_mode != "shortest":
        raise ValueError(f"resize_mode {resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return as_float32((left / new_w, top / new_h, (left + size) / new_w, (top + size) / new_h))


def random_crop(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float, float]:
    """torchvision RandomResizedCrop.get_params with a numpy RNG, as a normalised box."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            return as_float32((x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height))
    # Fallback, as torchvision: a centre crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return as_float32((x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height))


def sample_views(
    store_seed: int,
    sample: SampleId,
    *,
    width: int,
    height: int,
    n_views: int,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip: bool,
    resize_mode: str = "shortest",
) -> list[View]:
    """The K views of one sample: view 0 canonical, the rest random from their own seeds.

    `width`, `height`: the decoded image's size (the frame crops are normalised to).
    """
    views = [View(0, canonical_crop(width, height, size, resize_mode), False)]
    for v in range(1, n_views):
        rng = np.random.default_rng(sample_seed(store_seed, sample, "view", v))
        crop = random_crop(rng, width, height, scale, ratio)
        views.append(View(v, crop, bool(flip and rng.random() < 0.5)))
    return views


def render_view(decoded: Image.Image, crop, flip: bool, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """decoded: RGB image; crop: normalised [x0, y0, x1, y1] -> uint8 [size, size, 3].

    Crop, then resize to size x size, then flip; one Pillow resize with a sub-pixel box.
    """
    w, h = decoded.size
    x0, y0, x1, y1 = as_float32(crop)
    box = (x0 * w, y0 * h, x1 * w, y1 * h)
    out = decoded.resize((size, size), _RESAMPLE[interpolation], box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out, dtype=np.uint8)  # a writable copy: torch.from_numpy refuses read-only arrays


def view_hash(pixels: np.ndarray) -> str:
    """The stored `pixel_hash` of a rendered view: uint8 [S, S, 3], C order."""
    return pixel_hash(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
