"""Decoding untrusted image and clip bytes with limits; shared by the datasets and the server."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageSequence, UnidentifiedImageError

from adaptformer.errors import DataError, InputTooLargeError

__all__ = ["DEFAULT_MAX_PIXELS", "open_clip", "open_image"]

DEFAULT_MAX_PIXELS = 40_000_000


def _open(source: bytes | str | Path, max_pixels: int) -> Image.Image:
    name = "image" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise DataError("empty image: the body has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            w, h = img.size
            if w * h > max_pixels:
                raise InputTooLargeError(f"{name}: {w}x{h} pixels is more than the limit of {max_pixels:,} pixels")
            return img
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (PNG, JPEG, WebP, GIF, BMP, TIFF...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(f"{name}: image too large ({e})") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read image ({e})") from None


def open_image(source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decodes one still image fully (first frame of an animation), checking its size before decoding.

    Raises:
        DataError: empty, undecodable, truncated or larger than ``max_pixels``.
    """
    img = _open(source, max_pixels)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode image: {e}") from None
    return img


def open_clip(
    source: bytes | str | Path,
    max_frames: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_total_pixels: int = 2 * DEFAULT_MAX_PIXELS,
) -> list[Image.Image]:
    """Decodes every frame of an animated GIF or WebP (a still image gives one frame).

    Sizes are checked from the header before any frame is decoded.

    Raises:
        DataError: undecodable.
        InputTooLargeError: more than ``max_frames`` frames, a frame over ``max_pixels`` or all frames together
            over ``max_total_pixels``.
    """
    img = _open(source, max_pixels)
    n = getattr(img, "n_frames", 1)
    if n > max_frames:
        raise InputTooLargeError(f"clip has {n} frames; the limit is {max_frames}")
    w, h = img.size
    if w * h * n > max_total_pixels:
        raise InputTooLargeError(
            f"clip of {n} frames of {w}x{h} pixels is more than the limit of {max_total_pixels:,} pixels in all"
        )
    frames = []
    try:
        for frame in ImageSequence.Iterator(img):
            frames.append(frame.convert("RGBA").copy())
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode clip frame {len(frames)}: {e}") from None
    return frames
