"""``load_data``: one entry point for the built-in data sets and for image/clip folders."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from adaptformer.data.builtin import load_digits_splits, load_fashion_mnist_splits
from adaptformer.data.emoji import load_emoji_splits
from adaptformer.data.fashion_near import load_fashion_tint_splits, load_fashion_turned_splits
from adaptformer.data.folders import load_folder_splits
from adaptformer.data.motion import load_motion_splits
from adaptformer.data.types import Splits
from adaptformer.data.zoom_rotate import load_zoom_rotate_splits
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec

__all__ = ["BUILTIN_SOURCES", "load_data"]

BUILTIN_SOURCES: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST product photos, 10 classes, 60,000 train / 10,000 val (Debian dataset-fashion-mnist)",
    "fashion-tint": "Fashion-MNIST test-file items: garment pair x warm or cool tint, 10 classes, split with the seed",
    "fashion-turned": "Fashion-MNIST test-file items inverted and turned a quarter turn, 10 classes, split with the seed",
    "digits": "scikit-learn's 1,797 handwritten 8x8 digits, 10 classes, split with the seed",
    "emoji": "Noto Color Emoji by Unicode group, 9 classes, augmented; val emoji unseen (fonts-noto-color-emoji)",
    "motion": "clips: a picture moving in one of 8 directions, readable only across frames; 2,000 / 500 clips",
    "zoom-rotate": "clips: a picture zooming in or out or turning left or right, readable only across frames; 2,000 / 500",
}

# What a task trained on each built-in source answers, and what its callers must send (adapter metadata).
BUILTIN_NOTES: dict[str, tuple[str, str]] = {
    "fashion-mnist": (
        "kind of garment or shoe in a Fashion-MNIST-style photo (10 classes)",
        "one item, light grey on a black background, centred and filling the square (28x28 grey)",
    ),
    "fashion-tint": (
        "garment pair (top, warm layer, long, low shoe, bag or boot) and tint (warm or cool) of a tinted item",
        "one item, tinted orange or blue on a black background, centred and filling the square (28x28)",
    ),
    "fashion-turned": (
        "kind of garment or shoe in an inverted photo turned a quarter turn clockwise (10 classes)",
        "one dark item on a light background, turned a quarter turn clockwise, filling the square (28x28 grey)",
    ),
    "digits": (
        "handwritten digit 0-9",
        "a light digit on a dark background, filling the square (8x8 scans upscaled); invert dark-on-white photos",
    ),
    "emoji": (
        "Unicode group of an emoji (9 groups)",
        "one colour emoji on a plain background, filling half to all of the square",
    ),
    "motion": (
        "direction a picture moves in a clip (8 directions)",
        "a clip whose content slides a few pixels per frame in one direction",
    ),
    "zoom-rotate": (
        "whether a picture zooms in or out or turns left or right in a clip",
        "a clip whose content zooms or turns a little per frame",
    ),
}

_LOADERS: dict[str, Callable[..., Splits]] = {
    "fashion-mnist": load_fashion_mnist_splits,
    "fashion-tint": load_fashion_tint_splits,
    "fashion-turned": load_fashion_turned_splits,
    "digits": load_digits_splits,
    "emoji": load_emoji_splits,
    "motion": load_motion_splits,
    "zoom-rotate": load_zoom_rotate_splits,
}


def _check_args(spec: InputSpec, frames, val_fraction, limit) -> None:
    if not isinstance(spec, InputSpec):
        raise TypeError(f"spec must be an InputSpec, got {type(spec).__name__}")
    if frames is not None and (not isinstance(frames, numbers.Integral) or isinstance(frames, bool) or frames < 1):
        raise DataError(f"frames must be a positive integer, got {frames!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < float(val_fraction) < 1:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    if limit is not None and (not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"limit must be a positive integer (or None for everything), got {limit!r}")


def load_data(
    source: str,
    spec: InputSpec,
    *,
    frames: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
) -> Splits:
    """Loads a built-in data set or a folder, preprocessed with ``spec`` exactly as the server will.

    Args:
        source: A name from :data:`BUILTIN_SOURCES` or the path of an ImageFolder-style tree
            (``root/<class>/<images>``; clips as animated GIF/WebP files or folders of frames).
        spec: Input size, mean, std and interpolation. The source decides the modality; a clip spec only
            gives clip sources their default frame count.
        frames: Frames per clip, for ``motion`` and clip folders (clips of another length are resampled
            evenly). Unset: ``spec.frames`` when ``spec`` is a clip spec, else 8 for ``motion`` and the clips'
            own (common) length for folders. Image sources accept only None or 1.
        val_fraction: Share of each class held out for validation where the source has no fixed split.
        seed: Seeds every random choice (split, selection, augmentation, synthetic clips).
        limit: At most this many samples in each split (a seeded, class-balanced choice), for quick runs.
        progress: Show a progress bar (stderr) when loading takes longer than about two seconds.

    Raises:
        DataError: unknown source, missing path or files, empty or single-class folder, unreadable image,
            mixed images and clips, clips of different lengths without ``frames``, bad arguments.
    """
    _check_args(spec, frames, val_fraction, limit)
    frames = None if frames is None else int(frames)
    limit = None if limit is None else int(limit)
    kwargs: dict[str, Any] = dict(
        frames=frames, val_fraction=float(val_fraction), seed=int(seed), limit=limit, progress=progress
    )
    if source in _LOADERS:
        description, input_note = BUILTIN_NOTES.get(source, ("", ""))
        return replace(_LOADERS[source](spec, **kwargs), description=description, input_note=input_note)
    path = Path(os.path.expanduser(str(source)))
    if path.exists():
        return load_folder_splits(path, spec, **kwargs)
    if isinstance(source, Path) or any(s in str(source) for s in ("/", "\\", ".")) or str(source).startswith("~"):
        raise DataError(f"data path not found: {source} (built-in sources: {', '.join(BUILTIN_SOURCES)})")
    raise DataError(
        f"unknown data source {source!r}: give a folder path or one of the built-ins: {', '.join(BUILTIN_SOURCES)}"
    )
