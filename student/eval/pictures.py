"""Drawing for the pictures people check targets and predictions by (Pillow only).

tile = overlay(image, colorize(labels), alpha=0.55)        # class colours over the photo
draw_prompt(tile, box=[x0, y0, x1, y1], points=pts, labels=lab, scale=s)
page = sheet([("image", im), ("CLIP head", tile)], legend_items(names, present))
page.save("out.png")
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from student.metrics import IGNORE_LABEL

TILE_HEIGHT = 256
TITLE_HEIGHT = 18
IGNORE_COLOR = (255, 255, 255)


def class_colors(n: int) -> np.ndarray:
    """uint8 [n, 3]: the Pascal VOC colour map (class 0 black, 15 'person' pink, ...)."""
    colors = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors[i] = (r, g, b)
    return colors


def colorize(labels: np.ndarray, n_classes: int) -> Image.Image:
    """labels: int [H, W] class indices (255 = ignore, drawn white) -> RGB image."""
    table = np.concatenate([class_colors(max(n_classes, 1)), np.zeros((256, 3), np.uint8)])[:256]
    table[IGNORE_LABEL] = IGNORE_COLOR
    return Image.fromarray(table[np.clip(labels, 0, 255).astype(np.uint8)])


def overlay(image: Image.Image, colors: Image.Image, alpha: float = 0.55) -> Image.Image:
    return Image.blend(image.convert("RGB"), colors.convert("RGB").resize(image.size, Image.Resampling.NEAREST), alpha)


MASK_COLOR = (30, 144, 255)
BOX_COLOR = (255, 215, 0)
FOREGROUND_POINT, BACKGROUND_POINT = (0, 200, 0), (220, 0, 0)


def mask_overlay(
    image: Image.Image, mask: np.ndarray, color: tuple[int, int, int] = MASK_COLOR, alpha: float = 0.4
) -> Image.Image:
    """mask: bool [H, W] -> the image with the mask as a mask: a translucent fill in `color` and its
    outline (mask pixels with a 4-neighbour outside it) solid."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color, np.float32)
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    rgb[mask & ~inner] = color
    return Image.fromarray(rgb.round().astype(np.uint8))


def fit_height(image: Image.Image, height: int = TILE_HEIGHT) -> tuple[Image.Image, float]:
    """The image scaled to `height` px, and the scale applied."""
    scale = height / image.height
    return image.resize((max(1, round(image.width * scale)), height), Image.Resampling.BILINEAR), scale


def draw_prompt(
    image: Image.Image,
    *,
    box: Sequence[float] | None = None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scale: float = 1.0,
    color=BOX_COLOR,
    point_color: tuple[int, int, int] | None = None,
) -> Image.Image:
    """Box as a rectangle, points as dots (green foreground, red background, or all `point_color`:
    the class a point prompts), in image pixels x scale."""
    draw = ImageDraw.Draw(image)
    if box is not None:
        draw.rectangle([v * scale for v in box], outline=color, width=2)
    if points is not None:
        for i, (x, y) in enumerate(np.asarray(points).reshape(-1, 2) * scale):
            fg = labels is None or int(np.asarray(labels).reshape(-1)[i]) == 1
            fill = point_color or (FOREGROUND_POINT if fg else BACKGROUND_POINT)
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=fill, outline=(255, 255, 255), width=2)
    return image


def draw_crops(image: Image.Image, crops: np.ndarray, flips: np.ndarray) -> Image.Image:
    """crops: [K, 4] normalised x0, y0, x1, y1 -> rectangles labelled with the view index (f: flipped)."""
    draw = ImageDraw.Draw(image)
    colors = class_colors(len(crops) + 1)[1:]
    w, h = image.size
    for v, (crop, flip) in enumerate(zip(crops, flips)):
        box = [crop[0] * w, crop[1] * h, crop[2] * w - 1, crop[3] * h - 1]
        draw.rectangle(box, outline=tuple(int(c) for c in colors[v]), width=2)
        draw.text(
            (box[0] + 3, box[1] + 2),
            f"{v}{'f' if flip else ''}",
            fill=tuple(int(c) for c in colors[v]),
            font=ImageFont.load_default(),
        )
    return image


def legend_items(names: Sequence[str], present: Sequence[int]) -> list[tuple[str, tuple[int, int, int]]]:
    """A legend entry per class index present; the ignore label (255) as 'ignore (not scored)'."""
    colors = class_colors(len(names))
    present = sorted(set(int(p) for p in present))
    items = [(names[i], tuple(int(c) for c in colors[i])) for i in present if i < len(names)]
    return items + ([("ignore (not scored)", IGNORE_COLOR)] if IGNORE_LABEL in present else [])


def sheet(
    tiles: Sequence[tuple[str, Image.Image]],
    legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
    height: int = TILE_HEIGHT,
    note: str = "",
) -> Image.Image:
    """Tiles side by side at one height with a title above each, a colour legend below, and under
    it one line of `note` (what a title's figure means)."""
    font = ImageFont.load_default()
    scaled = [fit_height(t, height)[0] if t.height != height else t for _, t in tiles]
    width = sum(t.width for t in scaled) + 4 * (len(scaled) - 1)
    per_row = max(1, width // 170)
    legend_rows = -(-len(legend) // per_row)
    legend_bottom = TITLE_HEIGHT + height + 18 * legend_rows + (4 if legend else 0)
    page = Image.new("RGB", (width, legend_bottom + (18 if note else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    x = 0
    for (title, _), tile in zip(tiles, scaled):
        draw.text((x + 2, 3), title, fill=(0, 0, 0), font=font)
        page.paste(tile, (x, TITLE_HEIGHT))
        x += tile.width + 4
    for i, (name, color) in enumerate(legend):
        lx, ly = (i % per_row) * 170 + 2, TITLE_HEIGHT + height + 4 + (i // per_row) * 18
        draw.rectangle([lx, ly + 2, lx + 12, ly + 14], fill=color, outline=(0, 0, 0))
        draw.text((lx + 17, ly + 2), name[:24], fill=(0, 0, 0), font=font)
    if note:
        draw.text((2, legend_bottom + 2), note, fill=(0, 0, 0), font=font)
    return page
