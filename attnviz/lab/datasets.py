"""Data for the lab's classifiers: texts or images with labels, split into a training and a
held-out part.

- ``sentiment``: synthetic reviews, generated from a seed. Each is 8 to 20 neutral words
  (film talk that decides nothing) with one or two cue phrases inserted: an optional negation
  (not, never, hardly), an optional intensifier (very, really...), and a cue word (good, awful...).
  A negation flips its cue; every phrase of a review agrees on the label. The *rationale* of a
  review, the tokens that decide its label, is its cue words and negations, known for every
  example.
- ``csv``: the user's CSV or TSV file of (text, label) rows; the vocabulary is built from the
  training part.
- ``digits``: scikit-learn's 1,797 handwritten digits (8 x 8 scans, 17 grey levels), upsampled
  to the ViT's side, dark ink on white.
- ``images``: the user's zip (or folder) of class folders of images.

Every source is bounded (bytes, rows, files, classes), and refused with a message that says
what to fix. The held-out part (HELD_OUT of the examples, at least one) is never trained on.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.inputs import image_size, open_image
from attnviz.lab.classify import PAD, SPECIALS, UNK, words
from attnviz.models import upload

HELD_OUT = 0.2
IMAGE_MEAN, IMAGE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
MAX_CSV_BYTES = 20 << 20
MAX_ROWS = 50_000
MAX_WORDS = 200  # a text is cut to its first MAX_WORDS words
MAX_VOCAB = 20_000
MAX_CLASSES = 50
MAX_ZIP_BYTES = 50 << 20
MAX_IMAGES = 5_000
MAX_IMAGE_PIXELS = 25_000_000  # one image of a class-folder dataset (each is shrunk to a few dozen px)
MAX_DATASET_PIXELS = 250_000_000  # all the images of one dataset together, as their headers declare them
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")

POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "enjoyable", "brilliant", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "poor", "dull", "disappointing"]
NEGATIONS = ["not", "never", "hardly"]
INTENSIFIERS = ["very", "really", "truly", "extremely"]
NEUTRAL = ("the movie film plot actor actress story scene music director cast screen it this with of ending "
           "script camera popcorn seat ticket evening long city night character dialogue was is and a "
           "sequel trailer studio budget minutes theatre friend saw watched about year set").split()


@dataclass
class TextData:
    """Texts for a text classifier: ``train``/``test`` lists of token-id lists, ``train_y``/
    ``test_y`` int64 labels [examples], ``test_words`` the held-out texts' words (one per id),
    ``rationale`` (sentiment only): per held-out text a bool array [words], True where the word
    decides the label. ``vocab``: the words of the ids (SPECIALS first); ``labels``: class names;
    ``length``: the most words of a text; ``notes``: what was skipped or cut."""

    task: str
    vocab: list[str]
    labels: list[str]
    train: list[list[int]]
    train_y: np.ndarray
    test: list[list[int]]
    test_y: np.ndarray
    test_words: list[list[str]]
    length: int
    rationale: list[np.ndarray] | None = None
    notes: tuple[str, ...] = ()

    kind = "text"

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` training examples drawn at random: ids [size, longest] (0-padded), labels [size]."""
        pick = rng.integers(0, len(self.train), size)
        return pad([self.train[i] for i in pick]), torch.from_numpy(self.train_y[pick])

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        return pad(self.test), torch.from_numpy(self.test_y)


@dataclass
class ImageData:
    """Images for the ViT: ``train``/``test`` uint8 [examples, side, side, 3], labels int64
    [examples], class names ``labels``, and ``notes``."""

    task: str
    labels: list[str]
    train: np.ndarray
    train_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray
    notes: tuple[str, ...] = ()

    kind = "image"

    @property
    def side(self) -> int:
        return self.train.shape[1]

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = rng.integers(0, len(self.train), size)
        return pixels(self.train[pick]), torch.from_numpy(self.train_y[pick])

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        return pixels(self.test), torch.from_numpy(self.test_y)


def pad(ids: list[list[int]]) -> torch.Tensor:
    """Token-id lists as one int64 tensor [texts, longest], padded with 0."""
    out = torch.full((len(ids), max(1, max(map(len, ids)))), PAD, dtype=torch.int64)
    for i, row in enumerate(ids):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images [n, side, side, 3] as the ViT reads them: float32 [n, 3, side, side], scaled
    to [0, 1], minus IMAGE_MEAN, over IMAGE_STD (what attnviz.capture does for one image)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(IMAGE_MEAN)[:, None, None], torch.tensor(IMAGE_STD)[:, None, None]
    return (x - mean) / std


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled example indices: (training, held-out), HELD_OUT of them held out (at least one)."""
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * HELD_OUT)))
    return order[cut:], order[:cut]


# -- sentiment -------------------------------------------------------------------------------
def review(rng: np.random.Generator) -> tuple[list[str], int, np.ndarray]:
    """One synthetic review: (words, label 0 = negative / 1 = positive, rationale bool [words])."""
    label = int(rng.integers(2))
    units = [([str(w)], [False]) for w in rng.choice(NEUTRAL, int(rng.integers(8, 21)))]
    for _ in range(int(rng.integers(1, 3))):
        negated = rng.random() < 0.4
        positive = bool(label) != negated
        phrase, decides = [str(rng.choice(POSITIVE if positive else NEGATIVE))], [True]
        if rng.random() < 0.4:
            phrase, decides = [str(rng.choice(INTENSIFIERS))] + phrase, [False] + decides
        if negated:
            phrase, decides = [str(rng.choice(NEGATIONS))] + phrase, [True] + decides
        units.insert(int(rng.integers(0, len(units) + 1)), (phrase, decides))  # never inside another phrase
    return [w for u in units for w in u[0]], label, np.array([d for u in units for d in u[1]])


def sentiment(seed: int = 0, n_train: int = 4000, n_test: int = 500) -> TextData:
    """The synthetic review task: training and held-out reviews from two streams of ``seed``."""
    vocab = SPECIALS + sorted(set(POSITIVE + NEGATIVE + NEGATIONS + INTENSIFIERS + NEUTRAL))
    index = {w: i for i, w in enumerate(vocab)}
    train_rng, test_rng = (np.random.default_rng([seed, part]) for part in (0, 1))
    train = [review(train_rng) for _ in range(n_train)]
    test = [review(test_rng) for _ in range(n_test)]
    return TextData(
        task="sentiment", vocab=vocab, labels=["negative", "positive"],
        train=[[index[w] for w in r[0]] for r in train], train_y=np.array([r[1] for r in train]),
        test=[[index[w] for w in r[0]] for r in test], test_y=np.array([r[1] for r in test]),
        test_words=[r[0] for r in test], length=max(len(r[0]) for r in train + test),
        rationale=[r[2] for r in test])


# -- the user's CSV ----------------------------------------------------------------------------
def read_csv(data: bytes, name: str = "the file", seed: int = 0) -> TextData:
    """(text, label) rows of a CSV or TSV file (a header row ``text,label`` is optional; with
    one, the columns may come in any order). Rows with another number of columns or an empty
    text or label are skipped and listed in ``notes``; the file is refused when it is not
    UTF-8, too large, mostly bad, or has fewer than two labels."""
    if len(data) > MAX_CSV_BYTES:
        raise AttnvizError(f"{name} is {len(data) / 1e6:.1f} MB; at most {MAX_CSV_BYTES / 1e6:.0f} MB are accepted.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AttnvizError(f"{name} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); save it "
                           "as UTF-8 (in a spreadsheet: CSV UTF-8) and upload it again.") from None
    lines = text.splitlines()
    if not lines:
        raise AttnvizError(f"{name} is empty: give one (text, label) row per line.")
    tsv = name.lower().endswith(".tsv") or ("\t" in lines[0] and "," not in lines[0])
    rows = list(csv.reader(io.StringIO(text), delimiter="\t" if tsv else ","))
    head = [c.strip().lower() for c in rows[0]] if rows else []
    columns = (head.index("text"), head.index("label")) if {"text", "label"} <= set(head) else (0, 1)
    start = 1 if {"text", "label"} <= set(head) else 0
    if len(rows) - start > MAX_ROWS:
        raise AttnvizError(f"{name} has {len(rows) - start:,} rows; at most {MAX_ROWS:,} are accepted.")
    width = len(head) if start else 2
    texts, labels, bad = [], [], []
    for number, row in enumerate(rows[start:], start=start + 1):
        if not any(c.strip() for c in row):
            continue  # blank line
        if len(row) != width:
            bad.append(f"row {number}: {len(row)} column(s), expected {width}")
        elif not words(row[columns[0]]) or not row[columns[1]].strip():
            bad.append(f"row {number}: empty {'text' if not words(row[columns[0]]) else 'label'}")
        else:
            texts.append(words(row[columns[0]])[:MAX_WORDS])
            labels.append(row[columns[1]].strip())
    sep = "tab" if tsv else "comma"
    if len(texts) < 10 or len(bad) > 0.1 * (len(texts) + len(bad)):
        raise AttnvizError(f"{name}: {len(texts)} good row(s) and {len(bad)} bad ({'; '.join(bad[:3]) or 'none'}). "
                           f"Give at least 10 rows of two {sep}-separated columns, text then label "
                           "(quote texts that hold the separator).")
    names = sorted(set(labels))
    if len(names) < 2:
        raise AttnvizError(f"{name}: every row has the label '{names[0]}'; a classifier needs at least two classes.")
    if len(names) > MAX_CLASSES:
        raise AttnvizError(f"{name} has {len(names)} different labels; at most {MAX_CLASSES} classes are accepted "
                           "(is the label in the second column?).")
    y = np.array([names.index(label) for label in labels])
    train_at, test_at = _split(len(texts), seed)
    counts: dict[str, int] = {}
    for i in train_at:
        for w in texts[i]:
            counts[w] = counts.get(w, 0) + 1
    vocab = SPECIALS + sorted(counts, key=lambda w: (-counts[w], w))[:MAX_VOCAB - len(SPECIALS)]
    index = {w: i for i, w in enumerate(vocab)}
    notes = [f"Skipped {len(bad)} bad row(s): {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}."] if bad else []
    if any(len(words(r[columns[0]])) > MAX_WORDS for r in rows[start:] if len(r) == width):
        notes.append(f"Texts longer than {MAX_WORDS} words were cut to their first {MAX_WORDS}.")
    return TextData(
        task="csv", vocab=vocab, labels=names,
        train=[[index.get(w, UNK) for w in texts[i]] for i in train_at], train_y=y[train_at],
        test=[[index.get(w, UNK) for w in texts[i]] for i in test_at], test_y=y[test_at],
        test_words=[texts[i] for i in test_at], length=max(map(len, texts)), notes=tuple(notes))


# -- images ------------------------------------------------------------------------------------
def digits(side: int = 32, seed: int = 0) -> ImageData:
    """scikit-learn's handwritten digits, upsampled to ``side`` x ``side`` px (bilinear)."""
    from sklearn.datasets import load_digits

    scans = load_digits().images  # [1797, 8, 8], 0 (paper) to 16 (ink)
    grey = (255 - scans * (255 / 16)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((side, side), Image.Resampling.BILINEAR)) for g in grey])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    y = load_digits().target.astype(np.int64)
    train_at, test_at = _split(len(y), seed)
    return ImageData("digits", [str(d) for d in range(10)], rgb[train_at], y[train_at], rgb[test_at], y[test_at])


def image_folders(files: list[tuple[str, bytes]], side: int, source: str, seed: int = 0) -> ImageData:
    """Images in class folders, ``files`` as (path 'class/name.png', bytes): every image's
    declared size checked first (at most MAX_IMAGE_PIXELS each and MAX_DATASET_PIXELS
    together, before any is decoded), then every image read (attnviz.inputs.open_image: bombs
    and damaged files refused) and squashed to ``side`` px."""
    total = 0
    for path, data in files:
        parts = path.split("/")
        if len(parts) != 2:
            raise AttnvizError(f"{source}: '{path}' is not in a class folder; put the images in at least two "
                               "folders, each named after its class (cat/1.png, dog/2.png).")
        if not parts[1].lower().endswith(IMAGE_SUFFIXES):
            raise AttnvizError(f"{source}: '{path}' is not an image ({', '.join(IMAGE_SUFFIXES)}); "
                               "the folders may hold images only.")
        w, h = image_size(data, path)
        if w * h > MAX_IMAGE_PIXELS:
            raise AttnvizError(f"{source}: '{path}' is {w:,} x {h:,} pixels ({w * h / 1e6:,.0f} megapixels); an image "
                               f"of a dataset may have at most {MAX_IMAGE_PIXELS / 1e6:,.0f} megapixels (each is shrunk "
                               f"to {side} x {side} px): make the images smaller.")
        total += w * h
    if total > MAX_DATASET_PIXELS:
        raise AttnvizError(f"{source}: its images hold {total / 1e6:,.0f} megapixels together; a dataset may hold at "
                           f"most {MAX_DATASET_PIXELS / 1e6:,.0f} (each image is shrunk to {side} x {side} px): "
                           "send fewer or smaller images.")
    classes: dict[str, list[np.ndarray]] = {}
    for path, data in files:
        image = open_image(data, path).resize((side, side), Image.Resampling.BICUBIC)
        parts = path.split("/")
        classes.setdefault(parts[0], []).append(np.asarray(image, dtype=np.uint8))
    if len(classes) < 2:
        raise AttnvizError(f"{source} holds {len(classes)} class folder(s); a classifier needs at least two.")
    if len(classes) > MAX_CLASSES:
        raise AttnvizError(f"{source} holds {len(classes)} class folders; at most {MAX_CLASSES} are accepted.")
    labels = sorted(classes)
    x = np.stack([img for label in labels for img in classes[label]])
    y = np.array([i for i, label in enumerate(labels) for _ in classes[label]], dtype=np.int64)
    train_at, test_at = _split(len(y), seed)
    return ImageData("images", labels, x[train_at], y[train_at], x[test_at], y[test_at])


def read_image_zip(data: bytes, name: str = "the zip", side: int = 32, seed: int = 0) -> ImageData:
    """A zip of class folders, checked by the model uploads' own rules (names that stay inside,
    no links, declared and real sizes), at most MAX_ZIP_BYTES and MAX_IMAGES files."""
    if len(data) > MAX_ZIP_BYTES:
        raise AttnvizError(f"{name} is {len(data) / 1e6:.0f} MB; at most {MAX_ZIP_BYTES / 1e6:.0f} MB are accepted.")
    if not name.lower().endswith(".zip"):
        raise AttnvizError(f"{name} is not a .zip of class folders.")
    entries = upload.zip_entries([(name, data)], MAX_IMAGES, skip=_junk)
    if sum(e.size for e in entries) > 2 * MAX_ZIP_BYTES:
        raise AttnvizError(f"Unpacked, {name} would take more than {2 * MAX_ZIP_BYTES / 1e6:.0f} MB; refused.")
    room, files = 2 * MAX_ZIP_BYTES, []
    for e in entries:
        files.append((e.name, upload.read_entry(e, room)))
        room -= len(files[-1][1])
    return image_folders(files, side, name, seed)


def read_image_folder(folder: Path, side: int = 32, seed: int = 0) -> ImageData:
    """A folder of class folders on disk (the command line's ``images:DIR``), same bounds."""
    if folder.is_file():
        if folder.stat().st_size > MAX_ZIP_BYTES:
            raise AttnvizError(f"{folder} is over {MAX_ZIP_BYTES / 1e6:.0f} MB, the most accepted.")
        return read_image_zip(folder.read_bytes(), folder.name, side, seed)
    if not folder.is_dir():
        raise AttnvizError(f"{folder} is neither a folder of class folders nor a zip of them.")
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and not _junk(p.relative_to(folder).as_posix())]
    if len(paths) > MAX_IMAGES:
        raise AttnvizError(f"{folder} holds more than {MAX_IMAGES} files.")
    if sum(p.stat().st_size for p in paths) > 2 * MAX_ZIP_BYTES:
        raise AttnvizError(f"{folder} holds more than {2 * MAX_ZIP_BYTES / 1e6:.0f} MB.")
    if any(p.is_symlink() for p in folder.rglob("*")):
        raise AttnvizError(f"{folder} holds links; links are refused.")
    return image_folders([(p.relative_to(folder).as_posix(), p.read_bytes()) for p in paths], side, str(folder), seed)


def _junk(path: str) -> bool:
    """Files that archivers add on their own (macOS resource forks, Finder and Explorer caches)."""
    return path.startswith(JUNK[0]) or path.rsplit("/", 1)[-1] in JUNK[1:]
