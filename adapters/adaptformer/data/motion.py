"""A clip task that needs several frames: which way does the picture move?

Every clip is a 32x32 window sliding over a wrap-around mosaic of 3x3 real photographs (Fashion-MNIST
product photos; scikit-learn's digits when the Debian files are missing), tinted with a random pair of
colours. The window starts at a uniformly random position of the torus and moves by a random 2..4 pixels per
frame, so every single frame is just a uniformly random crop whatever the class: the label (the direction the
content moves) is readable only from the order of the frames.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from adaptformer.data._util import check_memory, clip_spec, fill, labels_tensor, stratified_order
from adaptformer.data.types import LabeledData, Splits
from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec, preprocess_clip

__all__ = ["MOTION_DIRECTIONS", "MOTION_LABELS", "load_motion_splits", "motion_clip"]

# (dx, dy) of the content on screen, y pointing down.
MOTION_DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (1, 0),
    "left": (-1, 0),
    "down": (0, 1),
    "up": (0, -1),
    "down-right": (1, 1),
    "down-left": (-1, 1),
    "up-right": (1, -1),
    "up-left": (-1, -1),
}
MOTION_LABELS = list(MOTION_DIRECTIONS)
MOTION_FRAMES = 8
MOTION_TRAIN = 2000
WINDOW = 32  # pixels of the mosaic a frame shows (then resized to spec.size)
TILES = 3  # the mosaic is TILES x TILES photographs
SPEEDS = (2, 3, 4)  # mosaic pixels per frame


def _photos(split: str) -> tuple[np.ndarray, str]:
    """Grey uint8 photographs (N, 28, 28) for the mosaics, different ones for train and val."""
    from adaptformer.data.fashion_mnist import load_fashion_mnist

    try:
        images, _ = load_fashion_mnist("train" if split == "train" else "test")
        return images, "Fashion-MNIST photos"
    except DataError:
        pass
    from adaptformer.data.builtin import digits_arrays

    try:
        images, _ = digits_arrays()
    except DataError:
        raise DataError(
            "motion needs pictures to move: install Fashion-MNIST (sudo apt-get install dataset-fashion-mnist) "
            'or scikit-learn (pip install "adaptformer-serve[data]")'
        ) from None
    from PIL import Image

    images = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BICUBIC)) for im in images])
    half = len(images) // 2
    return (images[:half] if split == "train" else images[half:]), "scikit-learn digits"


def tinted_mosaic(photos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """TILES x TILES random photos as one RGB uint8 picture in a random pair of colours (the clips' canvas)."""
    tile = photos.shape[1]
    picks = rng.integers(0, len(photos), size=TILES * TILES)
    grey = photos[picks].reshape(TILES, TILES, tile, tile).transpose(0, 2, 1, 3).reshape(TILES * tile, TILES * tile)
    # Random background colour; the foreground is brighter on a dark one and darker on a light one.
    bg = rng.integers(0, 256, size=3)
    fg = np.clip(bg + (1 if bg.mean() < 128 else -1) * rng.integers(96, 192, size=3), 0, 255)
    return (bg + (fg - bg) * (grey[..., None] / 255.0)).round().clip(0, 255).astype(np.uint8)


def motion_clip(photos: np.ndarray, label: int, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One clip: ``frames`` RGB uint8 arrays of WINDOW x WINDOW whose content moves in direction ``label``."""
    canvas = tinted_mosaic(photos, rng)
    side = canvas.shape[0]
    dx, dy = MOTION_DIRECTIONS[MOTION_LABELS[label]]
    speed = int(rng.choice(SPEEDS))
    x0, y0 = rng.integers(0, side, size=2)
    out = []
    for t in range(frames):
        # Content moves by +v on screen, so the window moves by -v over the (wrap-around) canvas.
        rows = (y0 - dy * speed * t + np.arange(WINDOW)) % side
        cols = (x0 - dx * speed * t + np.arange(WINDOW)) % side
        out.append(np.ascontiguousarray(canvas[np.ix_(rows, cols)]))
    return out


ClipMaker = Callable[[np.ndarray, int, int, np.random.Generator], list[np.ndarray]]


def _split(make, classes, photos, n, frames, spec, rng, desc, progress) -> LabeledData:
    y = np.arange(n) % classes
    y = y[stratified_order(y, rng)]
    cspec = clip_spec(spec, frames)
    x = fill(
        list(y),
        lambda label: preprocess_clip(make(photos, int(label), frames, rng), cspec),
        (frames, 3, spec.size, spec.size),
        desc,
        progress,
    )
    return LabeledData(x, labels_tensor(y))


def synthetic_clip_splits(
    name: str,
    make: ClipMaker,
    classes: int,
    spec: InputSpec,
    *,
    frames: int | None,
    default_frames: int,
    n_train: int,
    val_fraction: float,
    seed: int,
    limit: int | None,
    progress: bool,
) -> tuple[LabeledData, LabeledData, int, str]:
    """Train and val clips made by ``make(photos, label, frames, rng)`` over different photographs (train and test
    files), classes balanced; returns (train, val, frames, what the photographs are)."""
    if frames is None:
        frames = spec.frames if spec.modality == "clip" else default_frames
    if frames < 2:
        raise DataError(f"{name} needs at least 2 frames to show a change, got frames={frames}")
    n_val = max(1, round(n_train * val_fraction / (1 - val_fraction)))
    if limit is not None:
        n_train, n_val = min(n_train, limit), min(n_val, limit)
    check_memory(name, n_train + n_val, frames, spec.size)
    train_photos, what = _photos("train")
    val_photos, _ = _photos("val")
    rngs = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    train = _split(make, classes, train_photos, n_train, frames, spec, rngs[0], f"{name} train", progress)
    val = _split(make, classes, val_photos, n_val, frames, spec, rngs[1], f"{name} val", progress)
    return train, val, frames, what


def load_motion_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """2,000 training clips and ``round(2000 * val_fraction / (1 - val_fraction))`` validation clips (500 for
    the default 0.2), ``frames`` frames (at least 2; default: a clip spec's frames, else 8). ``limit`` caps each split.
    Train and val mosaics come from different photographs (the Fashion-MNIST train and test files)."""
    train, val, frames, what = synthetic_clip_splits(
        "motion", motion_clip, len(MOTION_LABELS), spec, frames=frames, default_frames=MOTION_FRAMES,
        n_train=MOTION_TRAIN, val_fraction=val_fraction, seed=seed, limit=limit, progress=progress,
    )  # fmt: skip
    return Splits(
        train,
        val,
        list(MOTION_LABELS),
        "clip",
        frames,
        f"motion (synthetic: a {WINDOW}px window over a wrap-around mosaic of {what} moving "
        f"{min(SPEEDS)}-{max(SPEEDS)}px/frame in 8 directions; {len(train)} train / {len(val)} val clips of "
        f"{frames} frames, seed={seed})",
    )
