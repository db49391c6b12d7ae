"""Uploaded images become the right upright RGB picture: EXIF orientation, odd modes, formats.

The orientation test goes all the way to the attention: a photo stored sideways with an EXIF
tag that says so gives the same patch grid and the same attention as the upright photo.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import attnviz
from attnviz.inputs import open_image

# EXIF orientation -> the transpose that, applied to the upright photo, gives what a camera
# stores; the viewer (and open_image) must undo it.
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def stored_with_exif(upright: Image.Image, orientation: int, fmt: str = "PNG", **kwargs) -> bytes:
    """``upright`` stored as a camera would: pixels turned, EXIF orientation tag set."""
    pixels = upright if STORED[orientation] is None else upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(pixels, fmt, exif=exif, **kwargs)


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_undone(photo, orientation):
    data = stored_with_exif(photo, orientation)
    if orientation in (5, 6, 7, 8):
        assert Image.open(io.BytesIO(data)).size == (photo.height, photo.width)  # stored sideways
    upright = open_image(data)
    assert upright.size == photo.size
    assert np.array_equal(np.asarray(upright), np.asarray(photo))


def test_exif_rotated_photo_gives_the_same_attention_as_the_upright_one(dinov2, photo):
    upright = attnviz.capture(dinov2, open_image(encode(photo)), size=224)
    rotated = attnviz.capture(dinov2, open_image(stored_with_exif(photo, 6)), size=224)
    assert upright.grid == rotated.grid  # 16 rows x 24 cols: landscape, not portrait
    assert (upright.grid.rows, upright.grid.cols) == (16, 24)
    np.testing.assert_allclose(rotated.attn["encoder"].astype(np.float32),
                               upright.attn["encoder"].astype(np.float32), atol=2e-3)


def test_exif_rotated_jpeg_gives_the_same_cls_map_as_the_upright_jpeg(dinov2, photo):
    """JPEG re-encodes the turned pixels (lossy), so the maps agree closely, not exactly."""
    upright = attnviz.capture(dinov2, open_image(encode(photo, "JPEG", quality=95)), size=224)
    rotated = attnviz.capture(dinov2, open_image(stored_with_exif(photo, 8, "JPEG", quality=95)), size=224)
    assert upright.grid == rotated.grid
    a = upright.attn["encoder"][-1, :, 0, 1:].astype(np.float64)  # last layer, CLS row, every head
    b = rotated.attn["encoder"][-1, :, 0, 1:].astype(np.float64)
    for head in range(a.shape[0]):
        assert np.corrcoef(a[head], b[head])[0, 1] > 0.95


# -- modes --------------------------------------------------------------------------------
def test_palette_with_a_transparent_index_goes_onto_white():
    img = Image.new("P", (8, 6), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    img.paste(1, (0, 0, 4, 6))  # left half blue
    img.info["transparency"] = 1  # ...and blue is transparent
    out = open_image(encode(img, transparency=1))
    assert out.mode == "RGB" and out.size == (8, 6)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((7, 0)) == (255, 0, 0)


def test_palette_with_per_entry_alpha_is_blended_onto_white():
    rgba = Image.new("RGBA", (8, 6), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((0, 128, 0, 255), (4, 0, 8, 6))  # right half opaque green
    out = open_image(encode(rgba.quantize(colors=4)))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((7, 5)) == (0, 128, 0)


def test_grayscale_and_grayscale_with_alpha():
    gray = Image.linear_gradient("L").resize((64, 32))
    out = open_image(encode(gray))
    assert out.mode == "RGB"
    r, g, b = (np.asarray(out)[..., i] for i in range(3))
    assert np.array_equal(r, np.asarray(gray)) and np.array_equal(r, g) and np.array_equal(g, b)
    la = Image.merge("LA", (gray, Image.new("L", gray.size, 0)))  # fully transparent
    assert np.asarray(open_image(encode(la))).min() == 255


def test_cmyk_jpeg_and_tiff_become_the_right_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in print colours
    for fmt in ("JPEG", "TIFF"):
        out = open_image(encode(cmyk, fmt))
        assert out.mode == "RGB"
        r, g, b = out.getpixel((8, 8))
        assert r > 240 and g < 15 and b < 15, (fmt, (r, g, b))


def test_16_bit_grayscale_is_scaled_to_8_bits():
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0)
    img = Image.fromarray(levels)
    assert img.mode == "I;16"
    out = open_image(encode(img))
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == [0, 64, 128, 255]


def test_16_bit_rgb_tiff_is_read():
    """16-bit RGB (as scanners and raw converters write) opens as 8-bit RGB, same picture."""
    rgb16 = np.zeros((4, 6, 3), dtype=np.uint16)
    rgb16[..., 0] = 65535
    data = _tiff_rgb16(rgb16)
    out = open_image(data)
    assert out.mode == "RGB" and out.size == (6, 4)
    assert out.getpixel((0, 0))[0] > 250 and out.getpixel((0, 0))[1] < 5


def _tiff_rgb16(pixels: np.ndarray) -> bytes:
    """A minimal uncompressed 16-bit RGB TIFF (Pillow cannot write one)."""
    import struct

    h, w, _ = pixels.shape
    body = pixels.astype("<u2").tobytes()
    entries = [  # tag, type (3 short, 4 long), count, value
        (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
        (273, 4, 1, None), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(body)), (284, 3, 1, 1),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    data_at = bits_at + 6
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_at
        elif tag == 273:
            value = data_at
        if kind == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + body
    return bytes(out)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_accepted_format_opens_upright_and_rgb(photo, fmt):
    out = open_image(encode(photo, fmt), f"cat.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == photo.size
    # lossy formats and GIF's 256 colours stay close to the photo
    assert np.abs(np.asarray(out).astype(int) - np.asarray(photo)).mean() < 12
