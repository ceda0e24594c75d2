"""Image bytes for requests: random or one-colour PNGs, animated GIFs, and the multipart fields that carry them
(PIL and numpy only: the client's tests use them too)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from adaptformer.preprocess import InputSpec

__all__ = ["encode", "gif", "image_files", "png", "tensor_of"]


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """``img`` saved in ``fmt``, as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def png(seed: int = 0, size: int | tuple[int, int] = (40, 40), *, color: tuple[int, int, int] | None = None) -> bytes:
    """An RGB PNG of ``size`` (width, height; an int: a square): random pixels drawn from ``seed``, or all
    ``color``."""
    w, h = (size, size) if isinstance(size, int) else size
    if color is not None:
        return encode(Image.new("RGB", (w, h), color))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels))


def gif(frames: int, seed: int = 0, size: int | tuple[int, int] = (40, 40)) -> bytes:
    """An animated GIF of ``frames`` distinct frames (:func:`png` of seeds ``seed``, ``seed + 1``, ...)."""
    images = [Image.open(io.BytesIO(png(seed + i, size))).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)


def tensor_of(data: bytes, spec: InputSpec) -> torch.Tensor:
    """An encoded image as the server's preprocessing gives it to the model."""
    from adaptformer.preprocess import preprocess_image

    return preprocess_image(Image.open(io.BytesIO(data)), spec)


def image_files(*images: bytes, field: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` for httpx: one ``field`` part per PNG."""
    return [(field, (f"{field}{i}.png", data, "image/png")) for i, data in enumerate(images)]
