"""The SAM input side both the pipeline and the student use: exactly what `SamPredictor` does.

    image_1024 = sam_input_image(rgb)                 # uint8 [h', w', 3], longest side 1024
    boxes_1024 = sam_boxes(boxes_xyxy, (H, W))        # prompts from original pixels to the 1024 frame
    points_1024 = sam_points(points_xy, (H, W))

Normalisation and bottom-right padding to 1024 x 1024 are `Sam.preprocess` (normalise, then pad
with zeros), applied on the model's device. The transforms are segment_anything's own
`ResizeLongestSide`, so the targets and the student see SamPredictor's inputs to the pixel.
"""

from __future__ import annotations

import numpy as np
from segment_anything.utils.transforms import ResizeLongestSide

IMAGE_SIZE = 1024  # SAM's input side: images are resized so their longest side is this, then padded
PIXEL_MEAN = (123.675, 116.28, 103.53)  # Sam.pixel_mean and pixel_std, on 0-255 RGB
PIXEL_STD = (58.395, 57.12, 57.375)
_TRANSFORM = ResizeLongestSide(IMAGE_SIZE)


def sam_input_image(image: np.ndarray) -> np.ndarray:
    """image: uint8 [H, W, 3] -> uint8 [h', w', 3] with max(h', w') == 1024."""
    return _TRANSFORM.apply_image(image)


def sam_points(points: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """points: [..., 2] (x, y) in original pixels; original_size: (H, W) -> float64 in the 1024 frame."""
    return _TRANSFORM.apply_coords(np.asarray(points, dtype=np.float64), original_size)


def sam_boxes(boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """boxes: [N, 4] [x0, y0, x1, y1] in original pixels -> float64 [N, 4] in the 1024 frame."""
    return _TRANSFORM.apply_boxes(np.asarray(boxes, dtype=np.float64), original_size)


def pad_image(image: np.ndarray) -> np.ndarray:
    """uint8 [h', w', 3] -> uint8 [1024, 1024, 3], zeros bottom-right (a fixed shape to carry
    between processes; crop back to (h', w') before `Sam.preprocess`)."""
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out
