"""attnviz's corpus of bad inputs, built at test time into a folder (nothing is downloaded and
nothing large is committed: bombs are a few hundred bytes that *claim* to be huge).

    python tests/corpus/make_corpus.py OUT_DIR      # builds the cases and lists them

Every :class:`Case` says which way in it takes (``kind``) and what must come out: ``expect``
is "ok" (``check``, when given, asserts on the result) or "error" (``match``, a regular
expression, must be found in the one-line AttnvizError message). The kinds:

- ``image``      bytes of an uploaded photo    -> attnviz.inputs.open_image, the image page's uploader
- ``text_file``  bytes of an uploaded text     -> attnviz.inputs.read_text, the text page's uploader
- ``typed``      a string typed in a text box  -> attnviz.capture(load_model(case.model), text), the text box
- ``upload``     files sent as a model upload  -> attnviz.models.upload.extract, then load_model on its folder
- ``folder``     a local model folder          -> attnviz.load_model(path)
- ``name``       a model name typed in         -> attnviz.load_model(name)
- ``dataset``    a zip of class folders        -> attnviz.lab.datasets.read_image_zip, Build your own's image uploader

For ``upload`` cases ``path`` is a folder of the files sent, each as one uploaded file under
the name listed in its names.json (a .zip among them is unpacked by the extractor).
"""
from __future__ import annotations

import io
import json
import re
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

UPLOAD_NAMES = "names.json"  # in an upload case's folder: [[name as sent, stored file], ...]


@dataclass(frozen=True)
class Case:
    """One bad (or odd) input and the outcome it must have."""

    name: str
    kind: str  # image | text_file | typed | upload | folder | name | dataset
    about: str
    expect: str  # "ok" or "error"
    match: str = ""  # for "error": a regex the message must contain
    check: Callable[[Any], None] | None = None  # for "ok": asserts on the backend's result
    path: Path | None = None  # the file or folder built (image, text_file, upload, folder)
    text: str | None = None  # the typed text or model name (typed, name)
    model: str = "minilm-l6"  # for typed cases: the model that reads the text

    def __post_init__(self) -> None:
        assert self.expect in ("ok", "error") and (self.expect == "ok" or self.match), self.name

    def data(self) -> bytes:
        return self.path.read_bytes()

    def uploads(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of each file an upload case sends (names as the browser sends them)."""
        names = json.loads((self.path / UPLOAD_NAMES).read_text())
        return [(name, (self.path / stored).read_bytes()) for name, stored in names]


def error(name, kind, about, match, **kw) -> Case:
    return Case(name, kind, about, "error", match=match, **kw)


def ok(name, kind, about, check=None, **kw) -> Case:
    return Case(name, kind, about, "ok", check=check, **kw)


# -- raw builders ---------------------------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, bad_crc: bool = False) -> bytes:
    """A PNG whose header claims width x height RGB pixels, followed by one tiny IDAT."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if bad_crc:
        ihdr = ihdr[:-4] + b"\0\0\0\0"
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def blank_png(width: int, height: int) -> bytes:
    """A real black-and-white PNG of width x height pixels, all black: a few kB however large
    (its rows are zeros, deflated), and it decodes in full."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 1 bit a pixel
    compress = zlib.compressobj(9)
    data = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim width x height pixels, with 4 bytes of data."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00" + b";")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def halves(size=(40, 20), left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """An RGB image, left half ``left``, right half ``right``: shows any rotation or mirror."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = left
    a[:, size[0] // 2:] = right
    return Image.fromarray(a)


def noise(size=(64, 64), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def with_exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(halves(), "JPEG", quality=95, exif=exif)


def zip_of(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps names like ../x as they are
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def overlapping_zip_bomb(copies: int, member_bytes: int) -> bytes:
    """A zip whose central directory lists ``copies`` files that all point at the same
    deflated ``member_bytes`` of zeros: a few KB on disk, ``copies * member_bytes`` unpacked."""
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b"{}")
        z.writestr("w0000.safetensors", b"\0" * member_bytes)
    raw = one.getvalue()
    end = raw.rindex(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", raw[end + 12:end + 20])
    central = raw[cd_offset:cd_offset + cd_size]
    second = central.index(b"PK\x01\x02", 4)
    config_entry, weights_entry = central[:second], central[second:]
    name_len = struct.unpack("<H", weights_entry[28:30])[0]
    entries = [config_entry]
    for i in range(copies):
        new_name = f"w{i:04d}.safetensors".encode()
        assert len(new_name) == name_len
        entries.append(weights_entry[:46] + new_name + weights_entry[46 + name_len:])
    new_central = b"".join(entries)
    tail = raw[end:end + 22]
    tail = tail[:8] + struct.pack("<HHII", len(entries), len(entries), len(new_central), cd_offset) + tail[20:]
    return raw[:cd_offset] + new_central + tail


def zip_lying_about_size(member_bytes: int) -> bytes:
    """A zip whose weights entry declares 1 KB but inflates to ``member_bytes``."""
    raw = bytearray(zip_of({"config.json": b"{}", "model.safetensors": b"\0" * member_bytes}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        start = 0
        while (i := raw.find(sig, start)) >= 0:
            if struct.unpack("<I", raw[i + offset:i + offset + 4])[0] == member_bytes:
                raw[i + offset:i + offset + 4] = struct.pack("<I", 1024)
            start = i + 4
    return bytes(raw)


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
              "ran", ".", ",", "!", "?", "and", "it", "was", "good", "##s", "##ing", "##ed"]


def tiny_bert(folder: Path, positions: int = 64) -> Path:
    """A real 2-layer BERT (hidden 32) with a 24-word vocabulary, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    logging.disable_progress_bar()

    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=positions)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    return folder


def tiny_gpt_neo(folder: Path, positions: int = 64) -> Path:
    """A real 2-layer GPT-Neo (hidden 16, 64 positions), saved as safetensors; its causal-mask
    buffers grow with max_position_embeddings squared."""
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    config = GPTNeoConfig(vocab_size=len(TINY_VOCAB), hidden_size=16, num_layers=2, num_heads=2, window_size=8,
                          attention_types=[[["global", "local"], 1]], max_position_embeddings=positions,
                          bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    GPTNeoForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_custom(folder: Path) -> Path:
    """attnviz's own toy model (2 layers, d_model 16), saved."""
    from attnviz.lab import custom

    return custom.save(custom.CustomNet(custom.CustomConfig(length=6, d_model=16, n_heads=2)), folder)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def with_config(files: dict[str, bytes], **overrides) -> dict[str, bytes]:
    """The same model files with ``overrides`` written over config.json (weights unchanged)."""
    config = json.loads(files["config.json"])
    return {**files, "config.json": json.dumps({**config, **overrides}).encode()}


# -- checks on results ----------------------------------------------------------------------
def size_is(w, h):
    def check(img):
        assert img.mode == "RGB" and img.size == (w, h), (img.mode, img.size)
    return check


def max_side_is(side, aspect=None):
    def check(img):
        assert img.mode == "RGB" and max(img.size) == side, img.size
        if aspect:
            assert abs(img.width / img.height - aspect) < 0.01, img.size
    return check


def pixel_near(xy, rgb, tol=40):
    def check(img):
        assert img.mode == "RGB", img.mode
        got = img.getpixel(xy)
        assert all(abs(a - b) <= tol for a, b in zip(got, rgb)), (xy, got, rgb)
    return check


def both(*checks):
    def check(out):
        for c in checks:
            c(out)
    return check


RED, BLUE, WHITE, BLACK, GREEN = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (0, 255, 0)


def text_is(expected):
    def check(text):
        assert text == expected, (text[:80], expected[:80])
    return check


def text_has(*parts, absent=()):
    def check(text):
        for p in parts:
            assert p in text, (p, text[:80])
        for p in absent:
            assert p not in text, (p, text[:80])
    return check


def tokens_have(*parts, n_max=None, warns=None):
    """Check an AttentionResult: its tokens contain ``parts``, its length, its warnings."""
    def check(result):
        joined = "".join(result.tokens)
        for p in parts:
            assert p in joined, (p, result.tokens[:20])
        attn = next(iter(result.attn.values()))
        assert attn.shape[-1] == len(result.tokens) and np.isfinite(attn).all()
        if n_max is not None:
            assert len(result.tokens) <= n_max, len(result.tokens)
        if warns is not None:
            assert any(re.search(warns, w) for w in result.warnings), result.warnings
    return check


def specials_at_ends():
    """Check an AttentionResult: only the first and last tokens (those the tokenizer adds, if
    any) are special, whatever special-token strings the text holds."""
    def check(result):
        inner = result.special[1:-1]
        assert not any(inner), [t for t, s in zip(result.tokens, result.special) if s]
    return check


def no_specials(warns=None):
    def check(result):
        assert not any(result.special), [t for t, s in zip(result.tokens, result.special) if s]
        if warns is not None:
            assert any(re.search(warns, w) for w in result.warnings), result.warnings
    return check


def reads_long_text_capped(most):
    """Check an upload's (Extracted, Model): its token cap is at most ``most``, and a text far
    longer than that is cut to the cap with a warning."""
    def check(out):
        _, model = out
        assert 0 < model.max_tokens <= most, model.max_tokens
        from attnviz import capture

        result = capture(model, "the cat sat on the mat . " * 5_000)
        assert len(result.tokens) <= model.max_tokens and any("cut" in w for w in result.warnings), result.warnings
    return check


def warns_on_capture(pattern):
    """Check an upload's (Extracted, Model): a capture of known words warns with ``pattern``."""
    def check(out):
        _, model = out
        from attnviz import capture

        assert any(re.search(pattern, w) for w in capture(model, "the cat sat on the mat").warnings)
    return check


def labels_are(*labels):
    """Check an ImageData: its classes."""
    def check(data):
        assert data.labels == list(labels), data.labels
    return check


def loaded(family, skipped=None):
    """Check an upload's (Extracted, Model): the family, and a regex some skipped line matches."""
    def check(out):
        extracted, model = out
        assert model.family == family, model.family
        if skipped:
            assert any(re.search(skipped, s) for s in extracted.skipped), extracted.skipped
    return check


# -- the corpus -----------------------------------------------------------------------------
def build(out: Path) -> list[Case]:
    """Write every case's files under ``out`` and return the cases."""
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def file(name: str, data: bytes) -> Path:
        path = out / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def upload(case: str, files: dict[str, bytes]) -> Path:
        folder = out / "uploads" / case
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for i, (name, data) in enumerate(files.items()):
            (folder / f"file{i}").write_bytes(data)
            names.append((name, f"file{i}"))
        (folder / UPLOAD_NAMES).write_text(json.dumps(names))
        return folder

    # images ---------------------------------------------------------------------------------
    png = encode(noise(), "PNG")
    jpg = encode(noise(), "JPEG", quality=90)
    img = lambda name, data, **kw: dict(kind="image", path=file(name, data), **kw)  # noqa: E731
    cases += [
        error("image-empty", about="zero-byte file", match="empty", **img("empty.png", b"")),
        error("image-truncated-png", about="first half of a PNG", match="truncated|damaged|decoded",
              **img("truncated.png", png[: len(png) // 2])),
        error("image-truncated-jpeg", about="first half of a JPEG", match="truncated|damaged|decoded",
              **img("truncated.jpg", jpg[: len(jpg) // 2])),
        error("image-jpeg-soi-only", about="a JPEG start marker and nothing else", match="not an image|damaged|decoded",
              **img("soi.jpg", b"\xff\xd8\xff")),
        error("image-text-as-png", about="a text file named .png", match="not an image",
              **img("notes.png", b"these are my notes, not a picture\n" * 10)),
        error("image-html-as-gif", about="an HTML page named .gif", match="not an image",
              **img("page.gif", b"<!doctype html><html><script>alert(1)</script></html>")),
        error("image-svg", about="an SVG (vector, not supported)", match="not an image",
              **img("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')),
        error("image-pdf", about="a PDF named .jpg", match="not an image", **img("scan.jpg", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")),
        error("image-zip-as-png", about="a zip named .png", match="not an image",
              **img("archive.png", zip_of({"a.txt": b"hello"}))),
        error("image-bomb-png", about="PNG header claiming 40000 x 40000 (1.6 gigapixels)", match="decompression bomb",
              **img("bomb.png", png_claiming(40000, 40000))),
        error("image-bomb-gif", about="GIF claiming 65535 x 65535", match="decompression bomb",
              **img("bomb.gif", gif_claiming(65535, 65535))),
        error("image-bomb-png-wide", about="PNG header claiming 2^31-1 x 1 ... x 100", match="decompression bomb|decoded|damaged",
              **img("wide-bomb.png", png_claiming(2**31 - 1, 100))),
        error("image-zero-width", about="PNG header with width 0", match="not an image|damaged|decoded|no pixels",
              **img("zero.png", png_claiming(0, 10))),
        error("image-bad-crc", about="PNG whose header checksum is wrong", match="not an image|damaged|decoded",
              **img("bad-crc.png", png_claiming(16, 16, bad_crc=True))),
        error("image-garbage-idat", about="valid PNG header, garbage pixel data", match="damaged|decoded|truncated",
              **img("garbage.png", png[:33] + png_chunk(b"IDAT", b"\x78\x9c" + bytes(range(256)) * 4) + png_chunk(b"IEND", b""))),
        ok("image-png-named-jpg", about="a PNG with a .jpg name (content decides)", check=size_is(64, 64),
           **img("really-png.jpg", png)),
        ok("image-jpeg-named-txt", about="a JPEG with a .txt name", check=size_is(64, 64), **img("really-jpeg.txt", jpg)),
        ok("image-1x1", about="a single pixel", check=both(size_is(1, 1), pixel_near((0, 0), GREEN, 0)),
           **img("pixel.png", encode(Image.new("RGB", (1, 1), GREEN), "PNG"))),
        ok("image-long-thin", about="10000 x 20 px: downscaled to 4096 px a side", check=max_side_is(4096),
           **img("strip.png", encode(Image.new("RGB", (10000, 20), RED), "PNG"))),
        ok("image-large-jpeg", about="5000 x 3000 JPEG: downscaled, aspect kept", check=max_side_is(4096, 5 / 3),
           **img("large.jpg", encode(Image.new("RGB", (5000, 3000), BLUE), "JPEG", quality=50))),
        ok("image-cmyk", about="CMYK JPEG (print files)", check=pixel_near((5, 5), RED, 60),
           **img("cmyk.jpg", encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95))),
        ok("image-16bit-gray", about="16-bit grayscale PNG, left black, right white",
           check=both(pixel_near((2, 2), BLACK, 2), pixel_near((30, 2), WHITE, 2)),
           **img("gray16.png", encode(Image.fromarray(np.repeat(np.array([[0] * 16 + [65535] * 16], np.uint16), 8, 0)), "PNG"))),
        ok("image-16bit-tiff-be", about="16-bit big-endian TIFF", check=size_is(32, 8),
           **img("gray16be.tif", encode(Image.fromarray(np.full((8, 32), 30000, np.uint16)).convert("I;16B"), "TIFF"))),
        ok("image-32bit-int-tiff", about="32-bit integer TIFF (mode I)", check=size_is(16, 16),
           **img("int32.tif", encode(Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16) * 1000), "TIFF"))),
        ok("image-float-tiff", about="32-bit float TIFF (mode F) with a NaN", check=size_is(16, 16),
           **img("float.tif", encode(Image.fromarray(np.where(np.eye(16) > 0, np.nan, np.linspace(-1, 1, 256).reshape(16, 16))
                                                     .astype(np.float32)), "TIFF"))),
        ok("image-palette-transparent", about="palette PNG with a transparent index: on white",
           check=both(pixel_near((0, 0), WHITE, 0), pixel_near((12, 12), RED, 0)), **img("palette.png", _palette_png())),
        ok("image-rgba", about="RGBA PNG, left half fully transparent: on white",
           check=both(pixel_near((2, 2), WHITE, 0), pixel_near((30, 2), BLUE, 0)), **img("rgba.png", _rgba_png())),
        ok("image-gray-alpha", about="grayscale + alpha PNG (LA)", check=size_is(8, 8),
           **img("la.png", encode(Image.new("LA", (8, 8), (0, 128)), "PNG"))),
        ok("image-1bit", about="1-bit black-and-white PNG", check=both(size_is(8, 8), pixel_near((0, 0), WHITE, 0)),
           **img("bw.png", encode(Image.new("1", (8, 8), 1), "PNG"))),
        ok("image-animated-gif", about="3-frame GIF: the first frame (red)", check=pixel_near((4, 4), RED, 10),
           **img("anim.gif", _animated("GIF"))),
        ok("image-animated-png", about="3-frame APNG: the first frame (red)", check=pixel_near((4, 4), RED, 10),
           **img("anim.png", _animated("PNG"))),
        ok("image-animated-webp", about="3-frame WebP: the first frame (red)", check=pixel_near((4, 4), RED, 40),
           **img("anim.webp", _animated("WEBP"))),
        ok("image-multipage-tiff", about="2-page TIFF: the first page", check=pixel_near((4, 4), RED, 0),
           **img("pages.tif", _animated("TIFF", n=2))),
        ok("image-lab-tiff", about="CIELAB TIFF", check=size_is(8, 8),
           **img("lab.tif", encode(Image.new("LAB", (8, 8), (128, 128, 128)), "TIFF"))),
        ok("image-ycbcr-tiff", about="YCbCr TIFF", check=size_is(8, 8),
           **img("ycbcr.tif", encode(Image.new("YCbCr", (8, 8), (128, 128, 128)), "TIFF"))),
        ok("image-exif-rotate-90", about="EXIF orientation 6: upright is 20 x 40, red on top",
           check=both(size_is(20, 40), pixel_near((10, 5), RED), pixel_near((10, 35), BLUE)),
           **img("rot6.jpg", with_exif_orientation(6))),
        ok("image-exif-rotate-270", about="EXIF orientation 8: upright is 20 x 40, red below",
           check=both(size_is(20, 40), pixel_near((10, 35), RED), pixel_near((10, 5), BLUE)),
           **img("rot8.jpg", with_exif_orientation(8))),
        ok("image-exif-rotate-180", about="EXIF orientation 3: red on the right",
           check=both(size_is(40, 20), pixel_near((35, 10), RED), pixel_near((5, 10), BLUE)),
           **img("rot3.jpg", with_exif_orientation(3))),
        ok("image-exif-mirror", about="EXIF orientation 2 (mirrored): red on the right",
           check=both(size_is(40, 20), pixel_near((35, 10), RED)), **img("mirror.jpg", with_exif_orientation(2))),
        ok("image-webp", about="a lossless WebP", check=size_is(64, 64), **img("photo.webp", encode(noise(), "WEBP", lossless=True))),
        ok("image-bmp", about="a BMP", check=size_is(64, 64), **img("photo.bmp", encode(noise(), "BMP"))),
    ]

    # text files -----------------------------------------------------------------------------
    txt = lambda name, data, **kw: dict(kind="text_file", path=file(name, data), **kw)  # noqa: E731
    sentence = "The cat sat on the mat."
    cases += [
        ok("text-utf8", about="plain UTF-8", check=text_is(sentence), **txt("plain.txt", sentence.encode())),
        ok("text-utf8-bom", about="UTF-8 with a byte-order mark", check=text_is(sentence),
           **txt("bom.txt", b"\xef\xbb\xbf" + sentence.encode())),
        ok("text-utf16-le", about="UTF-16 LE with BOM", check=text_is(sentence), **txt("le.txt", sentence.encode("utf-16"))),
        ok("text-utf16-be", about="UTF-16 BE with BOM", check=text_is(sentence),
           **txt("be.txt", b"\xfe\xff" + sentence.encode("utf-16-be"))),
        ok("text-crlf", about="Windows line ends", check=text_has("cat sat\nThe dog", absent=("\r",)),
           **txt("crlf.txt", b"The cat sat\r\nThe dog ran\r\n")),
        ok("text-ansi-escapes", about="terminal colour codes and a bell", check=text_has("red alert", absent=("\x1b", "\x07")),
           **txt("ansi.md", b"\x1b[31mred alert\x1b[0m\x07")),
        ok("text-rtl", about="Arabic and Hebrew", check=text_has("القطة", "החתול"),
           **txt("rtl.txt", "جلست القطة على الحصيرة. החתול ישב על השטיח.".encode())),
        ok("text-emoji", about="emoji with joiners and flags", check=text_has("👩‍👩‍👧", "🏳️‍🌈"),
           **txt("emoji.txt", "family 👩‍👩‍👧 flag 🏳️‍🌈 cat 🐈".encode())),
        ok("text-900kb", about="900 KB of text (under the 1 MB limit)", check=lambda t: len(t) > 800_000,
           **txt("long.txt", (sentence + " ") .encode() * 37_500)),
        error("text-empty", about="zero-byte file", match="empty", **txt("empty.txt", b"")),
        error("text-only-controls", about="only spaces and control characters", match="empty",
              **txt("blank.txt", b" \t\r\n\x1b\x07\x0b  ")),
        error("text-cp1252", about="Windows-1252 (not UTF-8)", match="not UTF-8", **txt("latin.txt", "café crème".encode("cp1252"))),
        error("text-truncated-utf8", about="UTF-8 cut inside a character", match="not UTF-8",
              **txt("cut.txt", "naïve café".encode()[:-1])),
        error("text-overlong-utf8", about="overlong UTF-8 encoding of '/'", match="not UTF-8", **txt("overlong.txt", b"a\xc0\xafb")),
        error("text-surrogate-utf8", about="a UTF-8-encoded lone surrogate", match="not UTF-8", **txt("surrogate.txt", b"a\xed\xa0\x80b")),
        error("text-binary", about="random bytes with NUL", match="binary",
              **txt("random.txt", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())),
        error("text-png-as-txt", about="a PNG named .txt", match="binary|not UTF-8", **txt("image.txt", png)),
        error("text-utf16-odd", about="UTF-16 BOM then an odd number of bytes", match="UTF-16",
              **txt("odd16.txt", b"\xff\xfeA\x00B")),
        error("text-over-1mb", about="1.2 MB of text", match="MB", **txt("huge.txt", b"word " * 240_000)),
    ]

    # typed text -----------------------------------------------------------------------------
    typed = lambda text, model="minilm-l6": dict(kind="typed", text=text, model=model)  # noqa: E731
    cases += [
        ok("typed-arabic", about="right-to-left Arabic", check=tokens_have("ق"), **typed("جلست القطة على الحصيرة")),
        ok("typed-bidi-override", about="Hebrew and English with RLO/PDF bidi controls",
           check=tokens_have("cat"), **typed("the cat \u202eשטיח\u202c sat")),
        ok("typed-emoji", about="emoji, joiners, skin tones, flags", check=tokens_have("cat"),
           **typed("my cat 🐈‍⬛ waved 👋🏽 at 👩‍👩‍👧 under 🇯🇵")),
        ok("typed-emoji-decoder", about="emoji on the byte-level decoder", check=tokens_have("cat"),
           **typed("my cat 🐈‍⬛ waved 👋🏽", model="smollm2-135m")),
        ok("typed-zalgo", about="stacked combining marks", check=tokens_have("t"), **typed("t̷̢̛h̸̡e̴ c̶a̵t̷" * 20)),
        ok("typed-cjk", about="Chinese without spaces", check=tokens_have("子", "上"), **typed("猫坐在垫子上。")),
        ok("typed-controls", about="NUL, escape and bell inside the text", check=tokens_have("cat"),
           **typed("the\x00 cat\x1b[31m sat\x07")),
        ok("typed-lone-surrogate", about="a lone UTF-16 surrogate (browsers can send one)", check=tokens_have("cat"),
           **typed("the cat \ud800 sat")),
        ok("typed-very-long", about="200,000 characters: cut to the model's 512 tokens with a warning",
           check=tokens_have("cat", n_max=512, warns="cut"), **typed("The cat sat on the mat. " * 8_400)),
        ok("typed-very-long-seq2seq", about="long text on the encoder-decoder: cut to 512 tokens",
           check=tokens_have("cat", n_max=512, warns="cut"), **typed("The cat sat on the mat. " * 400, model="t5-small-titler")),
        ok("typed-one-char", about="a single character", check=tokens_have("a"), **typed("a")),
        ok("typed-2m-joiners", about="two million zero-width joiners: cut before tokenising, with a warning",
           check=tokens_have(n_max=512, warns="only the first"), **typed("\u200d" * 2_000_000)),
        ok("typed-special-strings", about="[CLS], [SEP] and [MASK] typed inside the text stay text",
           check=specials_at_ends(), **typed("the cat [SEP] sat [CLS] on the [MASK] mat")),
        ok("typed-special-strings-decoder", about="chat-template markers typed on the decoder stay text",
           check=no_specials(), **typed("<|im_start|>user hi<|im_end|> <|endoftext|>", model="smollm2-135m")),
        ok("typed-eos-seq2seq", about="'</s>' typed on T5, which reads it as its end token: shown as text, warned",
           check=both(specials_at_ends(), tokens_have(warns="reads '</s>'")),
           **typed("the cat </s> sat on the mat", model="t5-small-titler")),
        error("typed-only-controls", about="only control characters", match="empty", **typed("\x00\x1b\x07\x08")),
        error("typed-whitespace", about="only spaces and newlines", match="empty", **typed("   \n\t  ")),
    ]

    # model uploads --------------------------------------------------------------------------
    bert = files_of(tiny_bert(out / "models" / "tiny-bert"))
    bert_64k = files_of(tiny_bert(out / "models" / "tiny-bert-64k", positions=65_536))
    neo = files_of(tiny_gpt_neo(out / "models" / "tiny-gpt-neo"))
    deep_json = b'{"a": ' * 50_000 + b"1" + b"}" * 50_000
    custom_files = files_of(tiny_custom(out / "models" / "tiny-custom"))
    config = bert["config.json"]
    weights = bert["model.safetensors"]
    up = lambda name, files, **kw: dict(kind="upload", path=upload(name, files), **kw)  # noqa: E731
    zipped = lambda files: {"model.zip": zip_of(files)}  # noqa: E731
    cases += [
        ok("upload-zip-tiny-bert", about="a zipped transformers folder (config, safetensors, vocab)",
           check=loaded("encoder"), **up("tiny-bert-zip", zipped(bert))),
        ok("upload-nested-folder", about="the zip holds my-model/config.json ...", check=loaded("encoder"),
           **up("nested", zipped({f"my-model/{k}": v for k, v in bert.items()}))),
        ok("upload-loose-files", about="loose files plus a .py and a pickle: both left out",
           check=loaded("encoder", skipped="pickle"),
           **up("loose", {**bert, "modeling_evil.py": b"import os; os.system('touch /tmp/pwned')",
                          "pytorch_model.bin": b"\x80\x04not really"})),
        ok("upload-custom", about="attnviz's own toy model, zipped", check=loaded("custom"),
           **up("custom", zipped(custom_files))),
        error("upload-zip-bomb", about="70 entries sharing one 32 MB deflated block: 2.2 GB unpacked",
              match="Unpacked.*MB", **up("bomb", {"bomb.zip": overlapping_zip_bomb(70, 32 << 20)})),
        error("upload-zip-lies", about="a zip entry declaring 1 KB that inflates to 8 MB",
              match="zip bomb|damaged", **up("lies", {"lies.zip": zip_lying_about_size(8 << 20)})),
        error("upload-traversal", about="a zip entry named ../../x.json", match="outside",
              **up("traversal", zipped({**bert, "../../x.json": b"{}"}))),
        error("upload-traversal-name", about="an uploaded file itself named ../../config.json", match="outside",
              **up("traversal-name", {"../../config.json": config, "model.safetensors": weights})),
        error("upload-absolute", about="a zip entry named /etc/cron.d/x.json", match="outside",
              **up("absolute", zipped({**bert, "/etc/cron.d/x.json": b"{}"}))),
        error("upload-windows-drive", about="a zip entry named C:\\Windows\\x.json", match="outside",
              **up("drive", zipped({**bert, "C:\\Windows\\x.json": b"{}"}))),
        error("upload-backslash-traversal", about="a zip entry named ..\\..\\x.json", match="outside",
              **up("backslash", zipped({**bert, "..\\..\\x.json": b"{}"}))),
        error("upload-symlink", about="a zip entry that is a symbolic link", match="link",
              **up("symlink", {"model.zip": zip_of(bert, links=("vocab2.txt",))})),
        error("upload-pickle-only", about="config.json and pytorch_model.bin only", match="pickle",
              **up("pickle-only", zipped({"config.json": config, "pytorch_model.bin": b"\x80\x04."}))),
        error("upload-not-zip", about="random bytes named .zip", match="not a readable zip",
              **up("not-zip", {"model.zip": b"PK\x03\x04 nope" * 10})),
        error("upload-empty-zip", about="a zero-byte .zip", match="not a readable zip", **up("empty-zip", {"model.zip": b""})),
        error("upload-no-config", about="weights but no config.json", match="no config.json",
              **up("no-config", zipped({"model.safetensors": weights}))),
        error("upload-no-weights", about="config.json only", match="no \\*.safetensors", **up("no-weights", {"config.json": config})),
        error("upload-config-not-json", about="config.json that is not JSON", match="not valid JSON",
              **up("config-text", zipped({**bert, "config.json": b"hidden_size = 384"}))),
        error("upload-config-list", about="config.json holding a list", match="JSON object",
              **up("config-list", zipped({**bert, "config.json": b"[1, 2, 3]"}))),
        error("upload-config-latin1", about="config.json in Latin-1", match="not valid JSON",
              **up("config-latin1", zipped({**bert, "config.json": '{"name": "café"}'.encode("latin-1")}))),
        error("upload-safetensors-garbage", about="model.safetensors of random bytes", match="not a safetensors",
              **up("st-garbage", zipped({**bert, "model.safetensors": bytes(range(256)) * 8}))),
        error("upload-safetensors-offsets", about="a tensor whose offsets point past the end", match="points outside",
              **up("st-offsets", zipped({**bert, "model.safetensors": safetensors_bytes(
                  {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}, b"\0" * 16)}))),
        error("upload-duplicate-names", about="two config.json (a zip and a loose file)", match="same name",
              **up("duplicate", {**zipped(bert), "config.json": config})),
        error("upload-too-many-files", about="300 files", match="more than",
              **up("many", zipped({**bert, **{f"extra{i}.txt": b"x" for i in range(300)}}))),
        error("upload-hidden-1e9", about="config.json with hidden_size 10^9: refused before allocating",
              match="Refused before loading", **up("hidden-1e9", zipped(with_config(bert, hidden_size=10**9)))),
        error("upload-layers-1e6", about="config.json with a million layers", match="layers",
              **up("layers-1e6", zipped(with_config(bert, num_hidden_layers=10**6)))),
        error("upload-deeper-than-weights", about="config.json with 250 layers over 2 layers of weights",
              match="do not match", **up("deeper", zipped(with_config(bert, num_hidden_layers=250)))),
        error("upload-vocab-1e12", about="config.json with vocab_size 10^12", match="Refused before loading",
              **up("vocab-1e12", zipped(with_config(bert, vocab_size=10**12)))),
        error("upload-negative-size", about="config.json with hidden_size -5", match="can be built",
              **up("negative", zipped(with_config(bert, hidden_size=-5)))),
        error("upload-shape-mismatch", about="safetensors shapes (hidden 32) unlike config.json (hidden 48)",
              match="other shapes", **up("mismatch", zipped(with_config(bert, hidden_size=48)))),
        error("upload-remote-code", about="config.json asking for its own code (auto_map) with a .py",
              match="configuration|Cannot", **up("remote-code", zipped({**bert, "configuration_evil.py": b"raise SystemExit",
                                                  "config.json": json.dumps({"model_type": "evil", "auto_map": {
                                                      "AutoConfig": "configuration_evil.EvilConfig"}}).encode()}))),
        error("upload-gpt-neo-positions", about="GPT-Neo config claiming 100,000 positions: 20 GB of mask buffers",
              match="parameters and buffers", **up("neo-positions", zipped(with_config(neo, max_position_embeddings=100_000)))),
        ok("upload-bert-65536-positions", about="a BERT embedding 65,536 positions: capped, long text cut",
           check=reads_long_text_capped(8192), **up("bert-64k", zipped(bert_64k))),
        error("upload-padded-safetensors", about="a 40 MB safetensors entry (a 40 kB zip) whose tensors use 16 bytes",
              match="declares .* bytes of data", **up("padded", zipped({**bert, "model.safetensors": safetensors_bytes(
                  {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * (40 << 20))}))),
        error("upload-config-nested", about="config.json nested 50,000 levels deep", match="nested too deeply",
              **up("config-nested", zipped({**bert, "config.json": deep_json}))),
        error("upload-safetensors-nested", about="a safetensors header nested 50,000 levels deep", match="not JSON",
              **up("st-nested", zipped({**bert, "model.safetensors": struct.pack("<Q", len(deep_json)) + deep_json}))),
        error("upload-safetensors-string-offsets", about="tensor offsets given as strings", match="points outside",
              **up("st-strings", zipped({**bert, "model.safetensors": safetensors_bytes(
                  {"w": {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}}, b"\0" * 16)}))),
        error("upload-zero-heads", about="config.json with num_attention_heads 0", match="can be built|malformed",
              **up("zero-heads", zipped(with_config(bert, num_attention_heads=0)))),
        error("upload-tokenizer-malformed", about="a tokenizer.json of the wrong shape", match="malformed",
              **up("bad-tokenizer", zipped({**bert, "tokenizer.json": b'{"model": {"type": "WordPiece", "vocab": 5}}'}))),
        ok("upload-no-tokenizer", about="weights and config without vocab.txt: every word unknown, warned",
           check=warns_on_capture("unknown"), **up("no-tokenizer", zipped({k: v for k, v in bert.items() if k != "vocab.txt"}))),
        error("upload-custom-absurd", about="attnviz custom config with d_model 10^9", match="d_model",
              **up("custom-absurd", zipped(with_config(custom_files, d_model=10**9)))),
        error("upload-custom-mismatch", about="attnviz custom weights of another width", match="do not match",
              **up("custom-mismatch", zipped(with_config(custom_files, d_model=32)))),
    ]

    # zips of class folders (Build your own's image classifier) --------------------------------
    dataset = lambda name, files: dict(kind="dataset", path=file(name, zip_of(files)))  # noqa: E731
    small = {f"{c}/{i}.png": encode(noise((24, 16), seed=i), "PNG") for c in ("cat", "dog") for i in range(3)}
    cases += [
        ok("dataset-small", about="two class folders of small PNGs", check=labels_are("cat", "dog"),
           **dataset("small.zip", small)),
        error("dataset-12000px-png", about="a real 12,000 x 12,000 PNG (a few kB): refused before it is decoded",
              match="12,000 x 12,000 pixels.*at most 25 megapixels",
              **dataset("huge.zip", {**small, "dog/huge.png": blank_png(12_000, 12_000)})),
        error("dataset-many-large-pngs", about="eleven real 5,000 x 5,000 PNGs: within the bound each, over it together",
              match="275 megapixels together",
              **dataset("many.zip", {**small, **{f"cat/big{i}.png": blank_png(5_000, 5_000) for i in range(11)}})),
    ]

    # local folders and names ----------------------------------------------------------------
    only_config = out / "folders" / "only-config"
    only_config.mkdir(parents=True, exist_ok=True)
    (only_config / "config.json").write_bytes(config)
    no_config = out / "folders" / "no-config"
    no_config.mkdir(parents=True, exist_ok=True)
    (no_config / "model.safetensors").write_bytes(weights)
    cases += [
        error("folder-no-weights", kind="folder", about="a folder with config.json only", match="no \\*.safetensors",
              path=only_config),
        error("folder-no-config", kind="folder", about="a folder with weights only", match="no config.json", path=no_config),
        error("folder-is-file", kind="folder", about="the path of a file, not a folder", match="is a file",
              path=no_config / "model.safetensors"),
        error("name-empty", kind="name", about="an empty model name", match="No model name", text="  "),
        error("name-traversal", kind="name", about="../../x", match="Unknown model", text="../../x"),
        error("name-very-long", kind="name", about="a 5000-character name", match="Unknown model|too long", text="a" * 5000),
        error("name-nul", kind="name", about="a name with a NUL byte", match="Unknown model", text="org/na\x00me"),
        error("name-hub-offline", kind="name", about="a hub id with the hub out of reach", match="Could not reach",
              text="someone/some-model"),
    ]
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def _palette_png() -> bytes:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (8, 8, 16, 16))
    return encode(img, "PNG", transparency=0)


def _rgba_png() -> bytes:
    a = np.zeros((8, 32, 4), np.uint8)
    a[:, 16:] = (0, 0, 255, 255)
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def _animated(fmt: str, n: int = 3) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)[:n]]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **({"duration": 100, "loop": 0} if fmt != "TIFF" else {}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # attnviz, from a checkout
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    for c in build(Path(sys.argv[1])):
        print(f"{c.kind:9} {c.expect:5} {c.name:30} {c.about}")
