"""Examples for the training-job tests: generated, labelled images a random tiny ViT separates (one hue per
class, noise on top), zipped as ``class/image`` or sent as ``image``+``label`` fields; and hostile zips."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image

from tests.support import encode

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}


def example(label: str, i: int, size: int = 24) -> bytes:
    """A PNG of ``label``'s colour with per-pixel noise and a random bright square (seeded by label and i)."""
    rng = np.random.default_rng(sum(map(ord, label)) * 1000 + i)
    base = np.array(COLOURS[label], dtype=np.float32)
    arr = base + rng.normal(0, 25, (size, size, 3))
    x, y = rng.integers(0, size - 6, 2)
    arr[y : y + 6, x : x + 6] = rng.uniform(0, 255, 3)
    return encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))


def examples_zip(per_class: int = 20, classes: tuple[str, ...] = ("red", "green", "blue"), wrapper: str = "") -> bytes:
    """A zip of ``<wrapper>/<class>/<n>.png`` (deflated)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for label in classes:
            for i in range(per_class):
                z.writestr(f"{wrapper}{label}/{i:03d}.png", example(label, i))
    return buf.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def labelled_fields(per_class: int = 4, classes: tuple[str, ...] = ("red", "blue")) -> list[tuple[str, tuple]]:
    """Multipart ``files`` for httpx: repeated ``image`` parts, each followed by its ``label``."""
    parts: list[tuple[str, tuple]] = []
    for label in classes:
        for i in range(per_class):
            parts.append(("image", (f"{label}{i}.png", example(label, i), "image/png")))
            parts.append(("label", (None, label)))
    return parts
