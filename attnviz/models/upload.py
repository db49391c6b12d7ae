"""Taking in a model that a user uploads, safely.

An upload is one zip, or several files, holding ``config.json`` and ``*.safetensors`` (plus
tokenizer or preprocessor files) of a transformers architecture, or attnviz's own custom
format (:mod:`attnviz.lab.custom`). :func:`extract` writes what it keeps into
``store.home()/uploads/<sha>/`` (sha: of the kept files' names and bytes, so the same upload
lands in the same folder), which :func:`attnviz.load_model` then loads like any folder.
At most MAX_UPLOADS such folders are kept, none unused for more than UPLOAD_TTL_S: each upload
marks its folder as used (its mtime), and older ones are removed; :func:`discard` removes the
folder of an upload that is refused when loaded. Which session may use a folder is the app's
business (attnviz.ui.models: a session sees only its own uploads).

What is refused, and why:

- more than MAX_UPLOAD_BYTES sent, or more than the upload budget once unpacked
  (``ATTNVIZ_UPLOAD_BYTES``, see attnviz.limits): the sizes a zip declares are checked before
  anything is written, and the bytes are counted again while they are written, stopping at the
  budget (a zip bomb declares little and inflates to a lot); the JSON files are written first,
  and a safetensors file whose header does not account for exactly its declared size is
  refused after its header, before its data;
- names that would land outside the folder (``../x``, ``/etc/x``, ``C:\\x``) and links;
- pickle files (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``): unpickling runs whatever
  code the file's author put in it. They are never written; an upload that has nothing else
  is refused with that explanation;
- weights that are not valid safetensors files (their header is checked), a config.json that
  is not a JSON object.

Nothing in an upload is executed: code files (``*.py``) and anything else not listed in
KEPT_SUFFIXES are left out, and models are loaded with ``trust_remote_code=False``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

import attnviz.limits as limits
from attnviz.errors import AttnvizError
from attnviz.models import store
from attnviz.models.loader import PICKLE_SUFFIXES

MAX_UPLOAD_BYTES = 1 << 30  # 1 GiB sent
MAX_FILES = 256
MAX_UPLOADS = 16  # upload folders kept; the least recently used beyond are removed
UPLOAD_TTL_S = 3600  # an upload folder unused this long is removed
MAX_HEADER_BYTES = 100 << 20  # a safetensors JSON header larger than this is not a real one
KEPT_SUFFIXES = (".json", ".safetensors", ".txt", ".model")  # config, weights, vocab, sentencepiece
REFUSED_PICKLES = PICKLE_SUFFIXES + (".pickle", ".joblib")
CHUNK = 1 << 20


@dataclass
class Extracted:
    """Where an upload went: ``folder`` (load it with attnviz.load_model), the ``files`` kept
    in it, and ``skipped``: one line per file left out, saying why."""

    folder: Path
    files: list[str]
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Entry:
    """One file of the upload: its checked name, declared size, and how to read its bytes."""

    name: str
    size: int
    open: Callable[[], BinaryIO]


def extract(uploads: list[tuple[str, bytes]], *, max_upload: int = MAX_UPLOAD_BYTES,
            max_extracted: int | None = None) -> Extracted:
    """Check ``uploads`` ((file name, bytes) pairs: zips are unpacked) and write the model
    files into ``store.home()/uploads/<sha>``; at most ``max_extracted`` bytes are written
    (default: the upload budget, ``limits.UPLOAD_BYTES``). Raises AttnvizError for anything
    refused, and leaves nothing behind then."""
    max_extracted = max_extracted or limits.budget(limits.UPLOAD_BYTES)
    if not uploads:
        raise AttnvizError("Nothing was uploaded: choose a zip, or config.json and the *.safetensors files.")
    sent = sum(len(data) for _, data in uploads)
    if sent > max_upload:
        raise AttnvizError(f"The upload is {sent / 1e6:.0f} MB; at most {max_upload / 1e6:.0f} MB are accepted.")
    entries = _strip_common_folder(list(_entries(uploads)))
    kept, skipped, pickles = [], [], []
    for e in entries:
        suffix = PurePosixPath(e.name).suffix.lower()
        if "/" in e.name:
            skipped.append(f"{e.name}: in a sub-folder; only the model folder's own files are read")
        elif suffix in REFUSED_PICKLES:
            pickles.append(e.name)
        elif suffix not in KEPT_SUFFIXES:
            skipped.append(f"{e.name}: not a config, weights or tokenizer file (nothing uploaded is run)")
        else:
            kept.append(e)
    names = [e.name for e in kept]
    if len(set(names)) != len(names):
        raise AttnvizError("The upload holds two files with the same name; send one model at a time.")
    if "config.json" not in names:
        raise AttnvizError("The upload has no config.json: send the model's folder (zipped) or its files.")
    if not any(n.endswith(".safetensors") for n in names):
        if pickles:
            raise AttnvizError(
                f"{', '.join(pickles[:3])}: pickle weights are refused, because unpickling runs any code "
                "its author put in the file. Save the model once, in a Python you trust, with "
                "model.save_pretrained(folder, safe_serialization=True) and upload the *.safetensors.")
        raise AttnvizError("The upload has no *.safetensors weights.")
    skipped += [f"{p}: pickle file, never opened (unpickling can run code); the safetensors weights are used"
                for p in pickles]
    declared = sum(e.size for e in kept)
    if declared > max_extracted:
        raise AttnvizError(f"Unpacked, the upload would take {declared / 1e6:.0f} MB; at most "
                           f"{max_extracted / 1e6:.0f} MB are accepted.")
    return Extracted(folder=_write(kept, max_extracted), files=sorted(names), skipped=skipped)


def _entries(uploads: list[tuple[str, bytes]], max_files: int = MAX_FILES) -> Iterator[_Entry]:
    count = 0
    for upload_name, data in uploads:
        if upload_name.lower().endswith(".zip"):
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
                infos = archive.infolist()
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise AttnvizError(f"{upload_name} is not a readable zip file ({e}).") from None
            for info in infos:
                if info.is_dir():
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise AttnvizError(f"{upload_name} holds a link ({info.filename}); links are refused.")
                count += 1
                yield _Entry(safe_name(info.filename, upload_name), info.file_size,
                             lambda archive=archive, info=info: archive.open(info))
        else:
            count += 1
            yield _Entry(safe_name(upload_name, upload_name), len(data), lambda data=data: io.BytesIO(data))
        if count > max_files:
            raise AttnvizError(f"The upload holds more than {max_files} files; a model needs a handful."
                               if max_files == MAX_FILES else f"The upload holds more than {max_files} files.")


def zip_entries(uploads: list[tuple[str, bytes]], max_files: int,
                skip: Callable[[str], bool] = lambda name: False) -> list[_Entry]:
    """The files of ``uploads`` (zips unpacked), checked as for a model (names inside the
    folder, no links, at most ``max_files``), less those whose name ``skip`` picks, with a
    folder that holds them all dropped from their names; nothing is read or written yet (see
    :func:`read_entry`). For uploads that are not models, such as a zip of images in class
    folders (attnviz.lab.datasets)."""
    return _strip_common_folder([e for e in _entries(uploads, max_files) if not skip(e.name)])


def read_entry(entry: _Entry, room: int) -> bytes:
    """The bytes of one entry of :func:`zip_entries`, refused past its declared size or ``room``."""
    out = io.BytesIO()
    try:
        with entry.open() as src:
            _copy_capped(src, out, hashlib.sha256(), entry, room)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise AttnvizError(f"{entry.name} could not be unpacked ({err}); the zip may be damaged.") from None
    return out.getvalue()


def safe_name(name: str, source: str) -> str:
    """A relative path without '..' or a drive, with '/' separators; AttnvizError otherwise."""
    posix = name.replace("\\", "/")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in parts or not parts:
        raise AttnvizError(f"{source} holds a file named '{name}', which points outside the upload's "
                           "folder; such names are refused.")
    return "/".join(parts)


def _strip_common_folder(entries: list[_Entry]) -> list[_Entry]:
    """Drop a folder that every file sits in (a zipped model folder 'my-model/config.json')."""
    while entries and all("/" in e.name for e in entries):
        top = {e.name.split("/", 1)[0] for e in entries}
        if len(top) != 1:
            break
        for e in entries:
            e.name = e.name.split("/", 1)[1]
    return entries


def uploads_dir() -> Path:
    """Where uploaded models are unpacked: ``store.home()/uploads``."""
    return store.home() / "uploads"


def _write(kept: list[_Entry], max_extracted: int) -> Path:
    """Stream the kept files into a temporary folder (counting bytes against the caps), check
    them, and move the folder to uploads/<sha>."""
    root = uploads_dir()
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=root) as tmp:
        build = Path(tmp) / "model"
        build.mkdir()
        for e in sorted(kept, key=lambda e: (not e.name.endswith(".json"), e.name)):  # configs first
            digest.update(e.name.encode() + b"\0")
            try:
                with e.open() as src, open(build / e.name, "wb") as dst:
                    written += _copy_capped(src, dst, digest, e, max_extracted - written)
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise AttnvizError(f"{e.name[:80]} could not be unpacked ({getattr(err, 'strerror', None) or err}); "
                                  "the zip may be damaged.") from None
        _check_files(build)
        folder = root / digest.hexdigest()[:16]
        while True:  # the same upload from another session may be unpacked, or removed, meanwhile
            if not folder.exists() and build.exists():
                try:
                    os.replace(build, folder)
                except OSError:  # another session unpacked the same upload meanwhile
                    if not folder.exists():
                        raise
            try:
                os.utime(folder)  # used now: the newest, the last to be pruned
                break
            except FileNotFoundError:  # another session removed it (refused when loaded, or pruned)
                if not build.exists():  # it was this one's files: unpacked as asked, and gone
                    raise AttnvizError("This upload was removed while it was unpacked; send it again.") from None
    _prune(root, MAX_UPLOADS, UPLOAD_TTL_S)
    return folder


def _prune(root: Path, keep: int, ttl_s: float) -> None:
    """Remove all but the ``keep`` most recently used upload folders (by mtime), and any unused
    for more than ``ttl_s`` seconds; the temporary ``.upload-*`` folders of uploads still being
    written are left alone."""
    used = []
    for p in root.iterdir():
        try:
            if p.is_dir() and not p.name.startswith("."):
                used.append((p.stat().st_mtime, p))
        except FileNotFoundError:  # removed by another session meanwhile
            continue
    now = time.time()
    ranked = sorted(used, reverse=True)
    for rank, (mtime, old) in enumerate(ranked):
        if rank >= keep or now - mtime > ttl_s:
            shutil.rmtree(old, ignore_errors=True)


def discard(folder: Path) -> None:
    """Remove the folder of an upload refused when loaded; folders elsewhere are left alone."""
    if folder.parent == uploads_dir():
        shutil.rmtree(folder, ignore_errors=True)


def _copy_capped(src: BinaryIO, dst: BinaryIO, digest, entry: _Entry, room: int) -> int:
    """Copy in chunks; refuse once more than the declared size or the room left arrives. A
    safetensors file's header is read and checked first: its tensors must account for exactly
    the entry's declared size, so that padding or a bomb is refused before its data is written."""
    copied = 0
    if entry.name.endswith(".safetensors"):
        head = src.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = src.read(n) if 0 < n <= min(entry.size - 8, MAX_HEADER_BYTES) else b""
        _check_header(entry.name, header, entry.size - 8 - len(header), exact=True)
        for chunk in (head, header):
            digest.update(chunk)
            dst.write(chunk)
        copied = len(head) + len(header)
    while chunk := src.read(CHUNK):
        copied += len(chunk)
        if copied > entry.size or copied > room:
            raise AttnvizError(f"{entry.name} unpacks to more bytes than its zip entry declares or than "
                               "the size limit allows: refused as a possible zip bomb.")
        digest.update(chunk)
        dst.write(chunk)
    return copied


def _check_files(folder: Path) -> None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except RecursionError:
        raise AttnvizError("config.json is nested too deeply to be a model's configuration.") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise AttnvizError(f"config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise AttnvizError("config.json must hold a JSON object.")
    for path in folder.glob("*.safetensors"):
        check_safetensors(path)


def check_safetensors(path: Path) -> None:
    """Refuse a file that is not a well-formed safetensors file: an 8-byte little-endian
    header length, a JSON header, and tensor data offsets that lie within the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = f.read(n) if 0 < n <= min(size - 8, MAX_HEADER_BYTES) else b""
    _check_header(path.name, header, size - 8 - len(header), exact=False)


def _check_header(name: str, raw: bytes, data: int, exact: bool) -> None:
    """Refuse a safetensors header ``raw`` (the JSON after the 8-byte length) that is missing or
    not a JSON object, or whose tensors point outside the ``data`` bytes that follow it (with
    ``exact``: or do not end exactly there)."""
    if not raw:
        raise AttnvizError(f"{name} is not a safetensors file (its header is missing or damaged).")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AttnvizError(f"{name} is not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise AttnvizError(f"{name} is not a safetensors file (its header is not a JSON object).")
    end = 0
    for key, tensor in header.items():
        if key == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise AttnvizError(f"{name} is not a valid safetensors file (tensor {str(key)[:40]!r} points outside it).")
        end = max(end, offsets[1])
    if exact and end != data:
        raise AttnvizError(f"{name} declares {data:,} bytes of data but its tensors use {end:,}: refused before "
                           "writing it (a damaged file, or a zip bomb).")
