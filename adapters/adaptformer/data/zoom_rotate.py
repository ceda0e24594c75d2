"""A clip task of another kind than ``motion``: does the picture zoom in, zoom out, turn left or turn right?

Every clip looks at a mosaic of real photographs (Fashion-MNIST; scikit-learn's digits when the Debian files are
missing, as for ``motion``) through a window that scales or rotates about its centre from frame to frame. The
start angle, mean scale and rate are random, so a single frame is a crop at a random angle and scale whatever
the class (the zoom classes' frames spread over a somewhat wider range of scales than the turning ones'): the
label is read from how frames change, and the change is not a shift (every patch moves its own way, towards,
away from or around the centre).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from adaptformer.data.motion import synthetic_clip_splits, tinted_mosaic
from adaptformer.data.types import Splits
from adaptformer.preprocess import InputSpec

__all__ = ["ZOOM_ROTATE_LABELS", "load_zoom_rotate_splits", "zoom_rotate_clip"]

# turn-left: the content turns counter-clockwise on screen; turn-right: clockwise.
ZOOM_ROTATE_LABELS = ["zoom-in", "zoom-out", "turn-left", "turn-right"]
ZOOM_ROTATE_FRAMES = 8
ZOOM_ROTATE_TRAIN = 2000
WINDOW = 32  # output pixels of a frame (then resized to spec.size)
ZOOM_STEP = (0.05, 0.10)  # log-scale change per frame
TURN_STEP = (6.0, 12.0)  # degrees per frame
MEAN_LOG_SCALE = 0.3  # the clip's mean log-scale is uniform in +-this


def _canvas(photos: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A tinted TILES x TILES mosaic, repeated 3 x 3 so that a turned or zoomed-out window stays inside."""
    return Image.fromarray(np.tile(tinted_mosaic(photos, rng), (3, 3, 1)))


def zoom_rotate_clip(photos: np.ndarray, label: int, frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One clip: ``frames`` RGB uint8 arrays of WINDOW x WINDOW that zoom or turn as ``label`` says."""
    canvas = _canvas(photos, rng)
    side = canvas.width // 3
    cx, cy = side + rng.uniform(0, side), side + rng.uniform(0, side)
    kind = ZOOM_ROTATE_LABELS[label]
    zoom = rng.uniform(*ZOOM_STEP) * {"zoom-in": 1, "zoom-out": -1}.get(kind, 0)
    turn = math.radians(rng.uniform(*TURN_STEP)) * {"turn-left": 1, "turn-right": -1}.get(kind, 0)
    mean_log_scale, angle0 = rng.uniform(-MEAN_LOG_SCALE, MEAN_LOG_SCALE), rng.uniform(0, 2 * math.pi)
    half = WINDOW / 2
    out = []
    for t in range(frames):
        step = t - (frames - 1) / 2  # centred, so the mean scale and angle do not depend on the class
        scale, angle = math.exp(mean_log_scale + zoom * step), angle0 + turn * step
        # Output offset o shows canvas point centre + R(angle) o / scale: the content appears scaled by ``scale``
        # and turned by -angle in y-down coordinates, i.e. counter-clockwise on screen as the angle grows.
        a, b = math.cos(angle) / scale, -math.sin(angle) / scale
        d, e = math.sin(angle) / scale, math.cos(angle) / scale
        coeffs = (a, b, cx - a * half - b * half, d, e, cy - d * half - e * half)
        frame = canvas.transform((WINDOW, WINDOW), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
        out.append(np.asarray(frame))
    return out


def load_zoom_rotate_splits(
    spec: InputSpec, *, frames: int | None, val_fraction: float, seed: int, limit: int | None, progress: bool
) -> Splits:
    """2,000 training clips and ``round(2000 * val_fraction / (1 - val_fraction))`` validation clips, ``frames``
    frames (at least 2; default: a clip spec's frames, else 8). ``limit`` caps each split. Train and val mosaics
    come from different photographs."""
    train, val, frames, what = synthetic_clip_splits(
        "zoom-rotate", zoom_rotate_clip, len(ZOOM_ROTATE_LABELS), spec, frames=frames,
        default_frames=ZOOM_ROTATE_FRAMES, n_train=ZOOM_ROTATE_TRAIN, val_fraction=val_fraction, seed=seed,
        limit=limit, progress=progress,
    )  # fmt: skip
    return Splits(
        train,
        val,
        list(ZOOM_ROTATE_LABELS),
        "clip",
        frames,
        f"zoom-rotate (synthetic: a {WINDOW}px window over a mosaic of {what} zooming by "
        f"{ZOOM_STEP[0]:g}-{ZOOM_STEP[1]:g} log-scale or turning {TURN_STEP[0]:g}-{TURN_STEP[1]:g} degrees per "
        f"frame; {len(train)} train / {len(val)} val clips of {frames} frames, seed={seed})",
    )
