"""The decode rule: dirty inputs decoded correctly or rejected with the right reason."""

import numpy as np
import pytest
from PIL import Image

from dirty_images import MAX_PIXELS, dirty_samples, encode
from storage_schemas.decode import BACKGROUND, DecodeError, decode_image, draft_side_for

SAMPLES = {name: (data, reason) for name, _, data, reason in dirty_samples()}


@pytest.mark.parametrize("name", [n for n, (_, r) in SAMPLES.items() if r is not None])
def test_bad_images_fail_with_their_reason(name):
    data, reason = SAMPLES[name]
    with pytest.raises(DecodeError) as e:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert e.value.reason == reason


def test_sixteen_bit_is_scaled_not_clipped():
    img = decode_image(SAMPLES["gray16"][0]).image
    assert img.mode == "RGB" and np.all(np.asarray(img) == 128)  # 32768 / 65535 * 255 = 127.5 -> 128


def test_alpha_is_composited_on_the_fixed_background():
    assert np.all(np.asarray(decode_image(SAMPLES["alpha"][0]).image) == BACKGROUND)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    got = np.asarray(decode_image(encode(half, "PNG")).image)
    assert np.all(np.abs(got.astype(int) - 127) <= 1)


def test_exif_orientation_is_applied():
    d = decode_image(SAMPLES["exif"][0])
    assert d.image.size == (20, 40) and d.full_size == (20, 40)
    a = np.asarray(d.image).astype(int)
    assert a[:18, :, 0].mean() > 200 and a[22:, :, 0].mean() < 60  # the red half is now on top


def test_cmyk_palette_webp_and_extreme_shapes_decode_to_rgb():
    for name, size in [
        ("cmyk", (451, 300)),
        ("palette", (451, 300)),
        ("webp", (451, 300)),
        ("one", (1, 1)),
        ("wide", (500, 10)),
    ]:
        img = decode_image(SAMPLES[name][0]).image
        assert img.mode == "RGB" and img.size == size, name
    cmyk = np.asarray(decode_image(SAMPLES["cmyk"][0]).image).astype(int)
    good = np.asarray(decode_image(SAMPLES["good"][0]).image).astype(int)
    assert np.abs(cmyk - good).mean() < 12, "CMYK converts to the same colours"


def test_jpeg_draft_is_part_of_the_rule():
    big = encode(Image.new("RGB", (2000, 1600), (90, 120, 200)), "JPEG", quality=90)
    d = decode_image(big, draft_side=draft_side_for(224))
    assert d.image.size == (1000, 800) and d.full_size == (2000, 1600)  # 1/2: both sides stay >= 448
    assert decode_image(big).image.size == (2000, 1600)
    assert decode_image(big, draft_side=draft_side_for(1024)).image.size == (2000, 1600)


def test_a_truncated_png_or_corrupt_exif_is_an_error_not_a_crash():
    png = encode(Image.new("RGB", (64, 48), (1, 2, 3)), "PNG")
    with pytest.raises(DecodeError) as e:
        decode_image(png[: len(png) // 2])
    assert e.value.reason in ("truncated", "bad_image")
    jpeg = SAMPLES["exif"][0]
    start = jpeg.index(b"Exif\x00\x00")
    broken = jpeg[: start + 10] + b"\xff" * 16 + jpeg[start + 26 :]  # garble the EXIF IFD
    try:
        decoded = decode_image(broken)
        assert decoded.image.mode == "RGB"
    except DecodeError as err:
        assert err.reason in ("bad_image", "truncated")


def test_limits_above_pillows_own_are_honoured():
    big = encode(Image.new("L", (12000, 16000)), "PNG")  # 192M pixels: over Pillow's 179M error threshold
    assert decode_image(big, max_pixels=200_000_000).image.size == (12000, 16000)
    with pytest.raises(DecodeError, match="decompression_bomb"):
        decode_image(big, max_pixels=100_000_000)
