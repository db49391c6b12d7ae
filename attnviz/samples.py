"""Real sample photographs, ready to try without an upload.

They come from scikit-image's bundled data (``skimage.data``), which ships inside its wheel,
so they work offline. Each one's license is the one stated in its ``skimage.data``
docstring; only public-domain and CC0 photos are used.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """A sample photo: ``loader`` is the name of its ``skimage.data`` function."""

    name: str
    loader: str
    what: str
    credit: str
    license: str


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in [
        Sample("coffee", "coffee", "a cup of coffee", "Rachel Michetti (Pikolo Espresso Bar)", "CC0"),
        Sample("cat", "chelsea", "Chelsea the cat", "Stefan van der Walt", "CC0"),
        Sample("astronaut", "astronaut", "astronaut Eileen Collins", "NASA", "public domain"),
        Sample("rocket", "rocket", "DSCOVR launch on a Falcon 9", "SpaceX", "public domain"),
    ]
}
DEFAULT_SAMPLE = "coffee"


@lru_cache(maxsize=len(SAMPLES))
def sample_bytes(name: str) -> bytes:
    """The sample photo ``name`` as PNG bytes (what an upload of it would hand over)."""
    from skimage import data

    pixels = getattr(data, SAMPLES[name].loader)()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def credits() -> str:
    """One line naming every sample, its photographer and its license."""
    return "; ".join(f"{s.name}: {s.what}, {s.credit}, {s.license}" for s in SAMPLES.values())
