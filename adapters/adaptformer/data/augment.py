"""Clip augmentation that keeps the label true: how frames are sampled in time, and where the clip is cropped.

Applied to each training batch of preprocessed clips ``[N, T, C, S, S]`` with the epoch's seeded generator, so a
run is reproducible for a seed. What it does, per clip:

- temporal jitter: the ``T`` frames are resampled (nearest frame) from a random window of the clip at a random
  speed between ``min_speed`` and 1, so the content moves as before but by less per frame, from a random start;
- a random crop of ``min_scale``..1 of each side at a random place, the same for every frame, resized back to
  ``S x S`` (bilinear).

Nothing flips or reverses: a horizontal flip turns "left" into "right" and "turn-left" into "turn-right", and
playing a clip backwards turns "zoom-in" into "zoom-out", so neither keeps every clip task's label true.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_augment"]


def clip_augment(
    clips: torch.Tensor, generator: torch.Generator, min_speed: float = 0.6, min_scale: float = 0.75
) -> torch.Tensor:
    """Temporal jitter and a random crop of each clip of ``clips`` ``[N, T, C, S, S]`` (see the module docstring).

    Raises:
        ValueError: not a batch of clips, or a speed or scale outside (0, 1].
    """
    if clips.ndim != 5:
        raise ValueError(f"expected clips [N, T, C, H, W], got shape {list(clips.shape)}")
    if not (0 < min_speed <= 1 and 0 < min_scale <= 1):
        raise ValueError(f"min_speed and min_scale must be in (0, 1], got {min_speed}, {min_scale}")
    n, t, _, h, w = clips.shape
    out = torch.empty_like(clips)
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    steps = torch.arange(t, dtype=torch.float64)
    for i in range(n):
        speed = min_speed + (1 - min_speed) * float(u[i, 0])
        start = float(u[i, 1]) * (t - 1) * (1 - speed)
        frames = (start + speed * steps).round().long().clamp(0, t - 1)
        scale = min_scale + (1 - min_scale) * float(u[i, 2])
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = int(float(u[i, 3]) * (h - ch + 1)), int(float(u[i, 4]) * (w - cw + 1))
        crop = clips[i, frames, :, top : top + ch, left : left + cw]
        out[i] = crop if (ch, cw) == (h, w) else F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return out
