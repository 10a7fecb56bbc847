"""The dirty inputs real corpora hold, made in memory: (name, extension, bytes, expected reason or None)."""

from __future__ import annotations

import io

import numpy as np
import skimage.data
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 40x20 picture, left half red, tagged orientation 6 (rotate 90 degrees clockwise to view)."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def dirty_samples() -> list[tuple[str, str, bytes, str | None]]:
    photo = Image.fromarray(skimage.data.chelsea())
    good = encode(photo, "JPEG", quality=90)
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    rgba = Image.new("RGBA", (32, 24), (255, 0, 0, 0))
    gray16 = Image.fromarray(np.full((24, 32), 32768, np.uint16))
    return [
        ("good", "jpg", good, None),
        ("truncated", "jpg", good[: len(good) // 2], "truncated"),
        ("empty", "jpg", b"", "empty"),
        ("html", "jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_an_image"),
        ("cmyk", "jpg", encode(photo.convert("CMYK"), "JPEG", quality=90), None),
        ("palette", "png", encode(palette, "PNG"), None),
        ("gray16", "png", encode(gray16, "PNG"), None),
        ("alpha", "png", encode(rgba, "PNG"), None),
        ("exif", "jpg", exif_rotated_jpeg(), None),
        ("bomb", "png", encode(Image.new("RGB", (1200, 1000)), "PNG"), "decompression_bomb"),
        ("one", "png", encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), None),
        ("wide", "jpg", encode(photo.resize((500, 10)), "JPEG"), None),
        ("webp", "webp", encode(photo, "WEBP"), None),
    ]


MAX_PIXELS = 1_000_000  # the test job's decompression-bomb limit: "bomb" has 1.2M pixels
