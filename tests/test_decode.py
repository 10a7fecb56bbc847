"""The decode rule: dirty inputs decoded correctly or rejected with the right reason."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dirty_images import MAX_PIXELS, dirty_samples, encode
from pipeline.config import load_job_config
from storage_schemas.pixels.decode import (
    BACKGROUND,
    DEFAULT_MAX_PIXELS,
    DecodeError,
    check_max_pixels,
    decode_image,
    draft_side_for,
)
from storage_schemas.plumbing.errors import ConfigError
from storage_schemas.plumbing.sample_errors import SampleError

SAMPLES = {name: (data, reason) for name, _, data, reason in dirty_samples()}


@pytest.mark.parametrize("name", [n for n, (_, r) in SAMPLES.items() if r is not None])
def test_bad_images_fail_with_their_reason(name):
    data, reason = SAMPLES[name]
    with pytest.raises(DecodeError) as e:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert e.value.reason == reason


def test_a_sample_error_names_a_known_reason():
    assert issubclass(DecodeError, SampleError)
    assert DecodeError("empty", "x").reason == "empty"
    with pytest.raises(ValueError, match="unknown error reason 'unreadable'"):
        DecodeError("unreadable", "a reason the errors table does not know")


def test_sixteen_bit_is_scaled_not_clipped():
    img = decode_image(SAMPLES["gray16"][0]).image
    assert img.mode == "RGB"
    assert np.all(np.asarray(img) == 128)  # 32768 / 65535 * 255 = 127.5 -> 128


def test_alpha_is_composited_on_the_fixed_background():
    assert np.all(np.asarray(decode_image(SAMPLES["alpha"][0]).image) == BACKGROUND)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    got = np.asarray(decode_image(encode(half, "PNG")).image)
    assert np.all(np.abs(got.astype(int) - 127) <= 1)


def test_exif_orientation_is_applied():
    d = decode_image(SAMPLES["exif"][0])
    assert d.image.size == (20, 40)
    assert d.full_size == (20, 40)
    a = np.asarray(d.image).astype(int)
    assert a[:18, :, 0].mean() > 200
    assert a[22:, :, 0].mean() < 60  # the red half is now on top


def test_cmyk_palette_webp_and_extreme_shapes_decode_to_rgb():
    for name, size in [
        ("cmyk", (451, 300)),
        ("palette", (451, 300)),
        ("webp", (451, 300)),
        ("one", (1, 1)),
        ("wide", (500, 10)),
    ]:
        img = decode_image(SAMPLES[name][0]).image
        assert img.mode == "RGB", name
        assert img.size == size, name
    cmyk = np.asarray(decode_image(SAMPLES["cmyk"][0]).image).astype(int)
    good = np.asarray(decode_image(SAMPLES["good"][0]).image).astype(int)
    assert np.abs(cmyk - good).mean() < 12, "CMYK converts to the same colours"


def test_jpeg_draft_is_part_of_the_rule():
    big = encode(Image.new("RGB", (2000, 1600), (90, 120, 200)), "JPEG", quality=90)
    d = decode_image(big, draft_side=draft_side_for(224))
    assert d.image.size == (1000, 800)  # 1/2: both sides stay >= 448
    assert d.full_size == (2000, 1600)
    assert decode_image(big).image.size == (2000, 1600)
    assert decode_image(big, draft_side=draft_side_for(1024)).image.size == (2000, 1600)


def test_a_truncated_png_is_truncated_and_a_corrupt_exif_block_is_ignored():
    png = encode(Image.new("RGB", (64, 48), (1, 2, 3)), "PNG")
    with pytest.raises(DecodeError) as e:
        decode_image(png[: len(png) // 2])
    assert e.value.reason == "truncated"
    jpeg = SAMPLES["exif"][0]
    start = jpeg.index(b"Exif\x00\x00")
    broken = jpeg[: start + 10] + b"\xff" * 16 + jpeg[start + 26 :]  # garble the EXIF IFD
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        decoded = decode_image(broken)
    # Unreadable EXIF means no orientation: the stored pixels, not rotated (the intact file is 20x40).
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == decoded.full_size == (40, 20)


def forged_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: opens like a huge image, holds a few bytes."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 4  # signature, then the IHDR chunk's length
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_the_bomb_limit_is_read_from_the_header_and_pillows_global_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    small = encode(Image.new("RGB", (60, 50)), "PNG")  # 3000 pixels
    assert decode_image(small, max_pixels=3000).image.size == (60, 50)
    with pytest.raises(DecodeError, match="60x50 = 3000 pixels > limit 2999") as e:
        decode_image(small, max_pixels=2999)
    assert e.value.reason == "decompression_bomb"
    with pytest.raises(DecodeError) as e:  # 400M pixels claimed: over Pillow's own limit, refused unread
        decode_image(forged_png(20_000, 20_000))
    assert e.value.reason == "decompression_bomb"
    assert "exceeds limit" in e.value.detail
    with pytest.raises(DecodeError, match="decompression_bomb"):  # under Pillow's limit (it warns), over ours
        with pytest.warns(Image.DecompressionBombWarning):
            decode_image(forged_png(12_000, 10_000), max_pixels=100_000_000)
    assert Image.MAX_IMAGE_PIXELS == before


def test_a_limit_above_pillows_is_refused_in_one_line():
    assert check_max_pixels(DEFAULT_MAX_PIXELS) is None
    assert "exceeds Pillow's own limit of 178956970" in check_max_pixels(200_000_000)
    with pytest.raises(ConfigError, match="'max_image_pixels': 200000000 exceeds Pillow's own limit"):
        load_job_config(None, ["max_image_pixels=200000000", "store.url=/tmp/x", "sources=[]"])
