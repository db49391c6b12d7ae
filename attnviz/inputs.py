"""Turning what a user hands over (bytes of a file, a typed string) into a clean input.

Every problem becomes an :class:`~attnviz.errors.AttnvizError` with a message a person can act
on; nothing here raises anything else for bad input.
"""
from __future__ import annotations

import io
import unicodedata
import warnings
from contextlib import contextmanager
from typing import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from attnviz.errors import AttnvizError

MAX_TEXT_BYTES = 1_000_000  # a longer upload is refused: no model here reads that many tokens
MAX_IMAGE_PIXELS = 150_000_000  # above this a file is treated as a decompression bomb
MAX_IMAGE_SIDE = 4096  # larger photos are downscaled (aspect kept) as they are opened
# Caps the uploaders state to the browser, in MiB (server.maxUploadSize is the server's hard cap)
MAX_TEXT_UPLOAD_MB = 1  # just above MAX_TEXT_BYTES, so that read_text explains the limit
MAX_IMAGE_UPLOAD_MB = 50
MAX_MODEL_UPLOAD_MB = 100  # each model uploader's cap (a zip, or several files each this large at most)


def clean_text(text: str) -> str:
    """Strip the ends, drop control characters other than newline and tab, and replace lone
    surrogates (which no tokenizer can encode) with U+FFFD.

    Raises AttnvizError for a text that is empty once cleaned.
    """
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # pairs joined, lone ones replaced
    kept = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    kept = kept.strip()
    if not kept:
        raise AttnvizError("The text is empty: type or upload some words first.")
    return kept


def read_text(data: bytes, name: str = "the file") -> str:
    """Decode an uploaded text file: UTF-8 (with or without BOM) or UTF-16 with a BOM.

    Binary files (NUL bytes, undecodable bytes) and files over MAX_TEXT_BYTES are refused.
    """
    if len(data) > MAX_TEXT_BYTES:
        raise AttnvizError(
            f"{name} is {len(data) / 1e6:.1f} MB; attnviz reads text files up to "
            f"{MAX_TEXT_BYTES / 1e6:.0f} MB (no model here reads more than a few thousand tokens)."
        )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return clean_text(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise AttnvizError(f"{name} starts like UTF-16 but does not decode as UTF-16.") from None
    if b"\x00" in data:
        raise AttnvizError(f"{name} looks binary (it holds NUL bytes), not like text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AttnvizError(
            f"{name} is not UTF-8 text (byte {e.start} cannot be decoded): save it as UTF-8 and try again."
        ) from None
    return clean_text(text)


def image_size(data: bytes, name: str = "the file") -> tuple[int, int]:
    """The (width, height) an image file declares, read from its header alone (nothing is
    decoded), so that a bound can be checked before the pixels are; AttnvizError when the
    bytes are not an image."""
    if not data:
        raise AttnvizError(f"{name} is empty (0 bytes).")
    with image_errors(name, "read"), Image.open(io.BytesIO(data)) as img:
        return img.size


@contextmanager
def image_errors(name: str, doing: str) -> Iterator[None]:
    """Within: PIL reads the image ``name`` (``doing``: "read", "decoded"), its own
    decompression-bomb warning silenced (the caller checks its own bound), and each error it
    raises becomes one AttnvizError for a person."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except AttnvizError:
        raise
    except Image.DecompressionBombError:
        raise AttnvizError(f"{name} claims far more pixels than any photo: refused as a possible decompression bomb.") from None
    except UnidentifiedImageError:
        raise AttnvizError(f"{name} is not an image that attnviz can read (PNG, JPEG, WebP, BMP, GIF, TIFF).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise AttnvizError(f"{name} could not be {doing} ({e}); it may be truncated or damaged.") from None


def open_image(data: bytes, name: str = "the file") -> Image.Image:
    """Open image bytes as an RGB PIL image, upright, at most MAX_IMAGE_SIDE pixels a side.

    Handles EXIF orientation, palette and alpha (composited on white), grayscale, CMYK and
    16-bit images, and takes the first frame of animations. Refuses empty, truncated and
    non-image files and decompression bombs.
    """
    if not data:
        raise AttnvizError(f"{name} is empty (0 bytes).")
    with image_errors(name, "decoded"):
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise AttnvizError(
                f"{name} claims {w} x {h} pixels ({w * h / 1e6:.0f} megapixels), more than the "
                f"{MAX_IMAGE_PIXELS / 1e6:.0f} allowed: refused as a possible decompression bomb."
            )
        if img.format == "JPEG" and max(w, h) > MAX_IMAGE_SIDE:
            img.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # decode a smaller JPEG directly
        img.seek(0)  # first frame of an animation
        img.load()
    if w < 1 or h < 1:
        raise AttnvizError(f"{name} has no pixels.")
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if max(img.size) > MAX_IMAGE_SIDE:
        img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: transparency goes onto white, 16-bit is scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo or 1.0) * 255.0
        img = Image.fromarray(np.nan_to_num(a).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("RGB", "L") and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")
