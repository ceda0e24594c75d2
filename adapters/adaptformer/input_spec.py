"""InputSpec: what a task expects as input, with every rule a spec must meet (no torch: the store reads it)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

__all__ = ["INTERPOLATIONS", "MAX_INPUT_FRAMES", "MAX_INPUT_SIZE", "InputSpec"]

INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
MAX_INPUT_SIZE = 4096
MAX_INPUT_FRAMES = 1024


def _number(v: object) -> bool:
    """A finite number (bools are not numbers here, although Python says they are)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: object, most: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= most


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input.

    Every value that would fail or poison each request is refused here (a size of 28.0, a mean of two values, a
    zero std), so an adapter file the library writes or reads is one the server serves.

    Args:
        size: Square side in pixels the image is resized to (1..4096).
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by (each > 0).
        interpolation: Resampling filter name (``bicubic``, ``bilinear``, ``nearest``).
        modality: ``image`` or ``clip``.
        frames: Frames per clip (1 for images).
        tubelet: Frames per space-time token (clips only).

    Raises:
        ValueError: a value breaks a rule (the message lists every one that does).
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    modality: str = "image"
    frames: int = 1
    tubelet: int = 1

    def __post_init__(self) -> None:
        if self.modality not in ("image", "clip"):
            raise ValueError(f"modality must be 'image' or 'clip', got {self.modality!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        problems = []
        if not _count(self.size, MAX_INPUT_SIZE):
            problems.append(f"size {self.size!r} is not an integer in 1..{MAX_INPUT_SIZE}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if not isinstance(values, (tuple, list)) or len(values) != 3 or not all(_number(v) for v in values):
                problems.append(f"{key} {values!r} is not 3 finite numbers")
        if isinstance(self.std, (tuple, list)) and any(_number(v) and v <= 0 for v in self.std):
            problems.append(f"std {list(self.std)!r} has a value <= 0")
        if not _count(self.frames, MAX_INPUT_FRAMES) or not _count(self.tubelet, MAX_INPUT_FRAMES):
            problems.append(
                f"frames {self.frames!r} and tubelet {self.tubelet!r} must be integers in 1..{MAX_INPUT_FRAMES}"
            )
        elif self.modality == "clip" and self.frames % self.tubelet:
            problems.append(f"frames ({self.frames}) must be a positive multiple of tubelet ({self.tubelet})")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        known = {k: d[k] for k in ("size", "interpolation", "modality", "frames", "tubelet") if k in d}
        for k in ("mean", "std"):
            if k in d:
                known[k] = tuple(float(v) for v in d[k])
        return cls(**known)

    def as_clip(self, frames: int, tubelet: int) -> InputSpec:
        return InputSpec(self.size, self.mean, self.std, self.interpolation, "clip", frames, tubelet)
