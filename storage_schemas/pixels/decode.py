"""Decoding image bytes into the RGB picture that views are rendered from: the one rule.

    decoded = decode_image(data, max_pixels=178_956_970, draft_side=448)

1. Pillow opens the bytes; an empty member, bytes that are no image, more pixels than `max_pixels`
   (a decompression bomb) or data that ends early fail with `DecodeError(reason, detail)`.
   The size is checked from the header, before any pixel is decoded. `max_pixels` can only lower
   Pillow's own bomb limit (`pillow_pixel_limit()`, 2 x `PIL.Image.MAX_IMAGE_PIXELS`), never raise
   it: Pillow reads that global on every open, and changing it here would change it for every
   thread and library of the process (`check_max_pixels` refuses a larger config value).
2. JPEG draft mode (optional): with `draft_side`, libjpeg decodes at the largest DCT reduction
   (1/2, 1/4, 1/8) that keeps both sides >= `draft_side`. This is part of the rule, not a shortcut
   on the side: the pipeline and the student pass the same `draft_side` for the same output size
   (`draft_side_for(size)`), so they see the same pixels.
3. EXIF orientation is applied (`ImageOps.exif_transpose`).
4. Mode conversion to 8-bit RGB: 16-bit integer images (modes I;16* and I) are scaled
   (65535 -> 255), not clipped; float images are taken as [0, 1]; alpha (RGBA, LA, palette transparency) is composited
   over BACKGROUND; CMYK, palette, greyscale and YCbCr convert as Pillow converts them.

`width`/`height` stored with a view are the EXIF-corrected size at full resolution
(`DecodedImage.full_size`); crops are normalised to the image, so they hold at any draft scale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage_schemas.plumbing.sample_errors import SampleError

BACKGROUND = (255, 255, 255)  # alpha is composited over white, as browsers show transparent images
DRAFT_FACTOR = 2  # draft keeps both sides >= 2 x output size, so no crop of >= 1/2 the side is upsampled
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own DecompressionBombError threshold (2 x its MAX_IMAGE_PIXELS)


class DecodeError(SampleError):
    """A sample's image bytes do not decode into a picture that may be used."""


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, EXIF-corrected, maybe draft-reduced
    full_size: tuple[int, int]  # (width, height) at full resolution, EXIF-corrected


def draft_side_for(size: int) -> int:
    """The `draft_side` both sides use when rendering views of `size` px."""
    return DRAFT_FACTOR * size


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None) -> DecodedImage:
    if not data:
        raise DecodeError("empty", "the member has no bytes")
    try:
        return _decode(data, max_pixels, draft_side)
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("not_an_image", str(e)) from None
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression_bomb", str(e)) from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) or "broken data stream" in str(e) else "bad_image"
        raise DecodeError(reason, str(e)) from None
    except Exception as e:  # Pillow fails in many ways on malformed headers and EXIF blocks
        raise DecodeError("bad_image", f"{type(e).__name__}: {e}") from None


def pillow_pixel_limit() -> int | None:
    """The pixel count above which Pillow itself refuses to open an image (None: no limit)."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def check_max_pixels(max_pixels: int) -> str | None:
    """Why `max_pixels` cannot be honoured in this process, or None."""
    if max_pixels <= 0:
        return f"must be a positive pixel count, got {max_pixels}"
    limit = pillow_pixel_limit()
    if limit is not None and max_pixels > limit:
        return f"{max_pixels} exceeds Pillow's own limit of {limit} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS)"
    return None


def _decode(data: bytes, max_pixels: int, draft_side: int | None) -> DecodedImage:
    im = Image.open(io.BytesIO(data))  # reads the header only; Pillow refuses sizes over its own limit
    w, h = im.size
    if w * h > max_pixels:
        raise DecodeError("decompression_bomb", f"{w}x{h} = {w * h} pixels > limit {max_pixels}")
    orientation = im.getexif().get(0x0112, 1)
    full_size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    if draft_side is not None and im.format == "JPEG":
        im.draft(None, (draft_side, draft_side))
    im.load()
    im = ImageOps.exif_transpose(im)
    return DecodedImage(to_rgb(im), full_size)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: wide integers scaled, alpha composited over BACKGROUND."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        # 16-bit images (Pillow's I;16*, and PNG/TIFF integers opened as I) span 0..65535.
        scale = 255.0 if im.mode == "F" else 255.0 / 65535.0
        a8 = a.astype(np.float64) * scale
        return Image.fromarray(np.clip(np.rint(a8), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBa", "La"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im
