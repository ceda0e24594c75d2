"""Image bytes for requests: random or one-colour PNGs, animated GIFs, and the multipart fields that carry them."""

from __future__ import annotations

import io

import torch
from PIL import Image

from adaptformer.preprocess import InputSpec, preprocess_image

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
    g = torch.Generator().manual_seed(seed)
    return encode(Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()))


def gif(frames: int, seed: int = 0, size: int | tuple[int, int] = (40, 40)) -> bytes:
    """An animated GIF of ``frames`` distinct frames (:func:`png` of seeds ``seed``, ``seed + 1``, ...)."""
    images = [Image.open(io.BytesIO(png(seed + i, size))).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)


def tensor_of(data: bytes, spec: InputSpec) -> torch.Tensor:
    """An encoded image as the server's preprocessing gives it to the model."""
    return preprocess_image(Image.open(io.BytesIO(data)), spec)


def image_files(*images: bytes, field: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` for httpx: one ``field`` part per PNG."""
    return [(field, (f"{field}{i}.png", data, "image/png")) for i, data in enumerate(images)]
