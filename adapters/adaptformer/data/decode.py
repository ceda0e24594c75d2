"""Decoding untrusted image and clip bytes with limits; shared by the datasets and the server.

Only an allow-list of formats is ever decoded: Pillow would otherwise sniff dozens (and hand EPS/PostScript to
Ghostscript where it is installed). Every frame's size is checked before that frame is decoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from adaptformer.errors import DataError, InputTooLargeError

__all__ = ["DEFAULT_MAX_PIXELS", "FILE_FORMATS", "IMAGE_FORMATS", "open_clip", "open_image"]

DEFAULT_MAX_PIXELS = 40_000_000
# Pillow format ids. Bytes (what a server receives) may only be these; files of a dataset folder also PPM/PGM.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FILE_FORMATS = (*IMAGE_FORMATS, "PPM")
_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"


def _open(source: bytes | str | Path, max_pixels: int, formats: Sequence[str] | None) -> Image.Image:
    name = "image" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise DataError("empty image: the body has zero bytes")
    if formats is None:
        formats = IMAGE_FORMATS if isinstance(source, bytes) else FILE_FORMATS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=list(formats))
            w, h = img.size
            if w * h > max_pixels:
                raise InputTooLargeError(f"{name}: {w}x{h} pixels is more than the limit of {max_pixels:,} pixels")
            return img
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image ({_NAMES}; no other format is decoded)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(f"{name}: image too large ({e})") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read image ({e})") from None


def open_image(
    source: bytes | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, formats: Sequence[str] | None = None
) -> Image.Image:
    """Decodes one still image fully (first frame of an animation), checking its size before decoding.

    Args:
        source: Encoded bytes or a file path.
        max_pixels: Largest width x height accepted.
        formats: Pillow format ids to accept; default ``IMAGE_FORMATS`` for bytes, ``FILE_FORMATS`` for paths.

    Raises:
        DataError: empty, undecodable, truncated, of another format or larger than ``max_pixels``.
    """
    img = _open(source, max_pixels, formats)
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
    *,
    formats: Sequence[str] | None = None,
    on_frame: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """Decodes every frame of an animated GIF or WebP, or every page of a TIFF (a still image gives one frame).

    Frames may differ in size (a GIF frame can be larger than its canvas, TIFF pages have their own sizes): each
    frame's size is read from its header and checked before that frame is decoded.

    Args:
        source: Encoded bytes or a file path.
        max_frames: Most frames accepted.
        max_pixels: Largest width x height of any one frame.
        max_total_pixels: Most pixels of all frames together.
        formats: As for ``open_image``.
        on_frame: Called with each frame's width and height before it is decoded (a caller's own budget);
            what it raises propagates.

    Raises:
        DataError: undecodable.
        InputTooLargeError: more than ``max_frames`` frames, a frame over ``max_pixels`` or all frames together
            over ``max_total_pixels``.
    """
    img = _open(source, max_pixels, formats)
    name = "clip" if isinstance(source, bytes) else str(source)
    n = getattr(img, "n_frames", 1)
    if n > max_frames:
        raise InputTooLargeError(f"{name} has {n} frames; the limit is {max_frames}")
    w, h = img.size
    if w * h * n > max_total_pixels:  # frames usually share the first one's size: refuse before decoding any
        raise InputTooLargeError(
            f"{name} of {n} frames of {w}x{h} pixels is more than the limit of {max_total_pixels:,} pixels in all"
        )
    frames: list[Image.Image] = []
    total = 0
    try:
        for i in range(n):
            img.seek(i)  # reads frame i's header (and finishes decoding the frames before it)
            w, h = img.size
            if w * h > max_pixels:
                raise InputTooLargeError(
                    f"{name}: frame {i + 1} is {w}x{h} pixels, more than the limit of {max_pixels:,} pixels"
                )
            total += w * h
            if total > max_total_pixels:
                raise InputTooLargeError(
                    f"{name}: the frames up to frame {i + 1} have more than the limit of {max_total_pixels:,} "
                    "pixels in all"
                )
            if on_frame is not None:
                on_frame(w, h)
            frames.append(img.convert("RGBA").copy())
    except InputTooLargeError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot decode clip frame {len(frames) + 1}: {e}") from None
    return frames
