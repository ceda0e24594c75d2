"""A clip task's own temporal part: what lets a frozen image ViT tell the order of frames apart.

The frozen tubelet embedding averages the frames of a tubelet, and neither the AdaptMLP branches (one token at a
time) nor the frozen attention were trained to compare a patch with itself one frame later. A clip task
therefore carries a small part of its own, stored in its adapter file and trained with it:

- ``diff``: a convolution over the differences of consecutive frames (``f_t - f_{t-1}``, zero for the first
  frame), patch-sized kernel over ``tubelet`` frames, stride = patch and tubelet, added to each tubelet's patch
  projection. Zero at init, so a fresh task embeds like the inflated image kernel; a still clip has no
  differences, so it never changes a still clip.
- ``time``: a learned embedding per time slot, zero at init; slot 0 has none (its code is zero).
- ``mix``: a depthwise difference filter across the time slots of each patch position,
  ``x_t + a * (x_{t-1} - x_t) + b * (x_{t+1} - x_t)`` per channel (edges repeated), zero at init.

Every part is zero for a still clip, and slot 0's fixed time code is zero too, so a one-frame clip embeds like
its image. The frozen backbone is untouched: these weights belong to the task, not to the backbone fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPORAL_PARTS", "TemporalConfig", "TemporalPart", "temporal_from_tensors"]

TEMPORAL_PARTS = ("diff", "time", "mix")


@dataclass(frozen=True)
class TemporalConfig:
    """Which temporal parts a clip task has.

    Args:
        diff: Temporal-difference kernel on the tubelet embedding.
        time: Learned per-slot time embedding (slot 0 excluded).
        mix: Depthwise difference filter across time slots.
    """

    diff: bool = True
    time: bool = False
    mix: bool = False

    @classmethod
    def parse(cls, text: str) -> TemporalConfig:
        """``"none"`` or a ``+``/``,``-separated list of parts, e.g. ``"diff"``, ``"diff+time"``."""
        names = [] if text.strip() == "none" else [n.strip() for n in text.replace(",", "+").split("+") if n.strip()]
        bad = [n for n in names if n not in TEMPORAL_PARTS]
        if bad or (not names and text.strip() != "none"):
            raise ValueError(
                f"temporal parts must be 'none' or a '+'-list of {', '.join(TEMPORAL_PARTS)}; got {text!r}"
            )
        return cls(**{n: n in names for n in TEMPORAL_PARTS})

    def __str__(self) -> str:
        return "+".join(n for n in TEMPORAL_PARTS if getattr(self, n)) or "none"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TemporalConfig:
        if not isinstance(d, dict) or not all(isinstance(d.get(n, False), bool) for n in TEMPORAL_PARTS):
            raise ValueError(f"temporal config must map {', '.join(TEMPORAL_PARTS)} to booleans, got {d!r}")
        return cls(**{n: d.get(n, False) for n in TEMPORAL_PARTS})


class TemporalPart(nn.Module):
    """The temporal weights of one clip task (see the module docstring).

    Args:
        config: Which parts.
        dim: Token width of the backbone.
        patch: Patch size ``(ph, pw)`` of the backbone's patch projection.
        in_chans: Input channels.
        tubelet: Frames per token.
        slots: Time slots (frames / tubelet).
    """

    def __init__(
        self, config: TemporalConfig, dim: int, patch: tuple[int, int], in_chans: int, tubelet: int, slots: int
    ) -> None:
        super().__init__()
        self.config = config
        self.tubelet = tubelet
        self.slots = slots
        self.diff = nn.Parameter(torch.zeros(dim, in_chans, tubelet, *patch)) if config.diff else None
        self.time = nn.Parameter(torch.zeros(slots - 1, dim)) if config.time and slots > 1 else None
        self.mix = nn.Parameter(torch.zeros(2, dim)) if config.mix else None

    def projection_delta(self, clips: torch.Tensor) -> torch.Tensor | None:
        """What ``diff`` adds to the patch projection: ``[n, dim, slots, h, w]`` for clips ``[n, T, C, H, W]``."""
        if self.diff is None:
            return None
        steps = clips.diff(dim=1)  # [n, T - 1, C, H, W]
        steps = torch.cat([torch.zeros_like(clips[:, :1]), steps], dim=1).transpose(1, 2)
        return F.conv3d(steps, self.diff.to(steps.dtype), stride=(self.tubelet, *self.diff.shape[-2:]))

    def mix_slots(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[n, slots, patches, dim]`` with the ``mix`` filter applied."""
        if self.mix is None or x.shape[1] < 2:
            return x
        prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        nxt = torch.cat([x[:, 1:], x[:, -1:]], dim=1)
        a, b = self.mix.to(x.dtype)
        return x + a * (prev - x) + b * (nxt - x)

    def time_code(self, fixed: torch.Tensor) -> torch.Tensor:
        """The time code per slot ``[slots, dim]``: ``fixed`` (slot 0 zero) plus the learned embedding."""
        if self.time is None:
            return fixed
        return fixed + torch.cat([torch.zeros_like(self.time[:1]), self.time.to(fixed.dtype)])

    def check(self, dim: int, patch: tuple[int, int], in_chans: int) -> str | None:
        """Why this part does not fit a backbone of that width, patch and channels (``None`` when it fits)."""
        if self.diff is not None and tuple(self.diff.shape[:2]) + tuple(self.diff.shape[3:]) != (dim, in_chans, *patch):
            return (
                f"its temporal kernel has shape {list(self.diff.shape)}; the backbone needs "
                f"[{dim}, {in_chans}, {self.tubelet}, {patch[0]}, {patch[1]}]"
            )
        for name in ("time", "mix"):
            p = getattr(self, name)
            if p is not None and p.shape[-1] != dim:
                return f"its temporal {name} weights have width {p.shape[-1]}; the backbone's tokens have {dim}"
        return None

    def extra_repr(self) -> str:
        return f"parts={self.config}, tubelet={self.tubelet}, slots={self.slots}"


def temporal_from_tensors(
    config: dict, tensors: dict[str, torch.Tensor], frames: int, tubelet: int, source: str
) -> tuple[TemporalPart, set[str]]:
    """Rebuilds a task's TemporalPart from adapter-file tensors; returns it and the tensor names it used.

    Raises:
        ValueError: the config is malformed, or a tensor is missing or of the wrong shape (the message names it).
    """
    cfg = TemporalConfig.from_dict(config)
    slots = frames // tubelet
    diff = tensors.get("temporal.diff")
    if cfg.diff and (diff is None or diff.ndim != 5 or diff.shape[2] != tubelet):
        got = "missing" if diff is None else f"of shape {list(diff.shape)}"
        raise ValueError(f"{source}: tensor 'temporal.diff' is {got}; expected [dim, channels, {tubelet}, ph, pw]")
    dims = [t.shape[-1] for t in (tensors.get("temporal.time"), tensors.get("temporal.mix")) if t is not None]
    if diff is not None and cfg.diff:
        dim, channels, patch = int(diff.shape[0]), int(diff.shape[1]), (int(diff.shape[3]), int(diff.shape[4]))
    else:
        dim, channels, patch = (dims[0] if dims else 1), 3, (1, 1)
    part = TemporalPart(cfg, dim, patch, channels, tubelet, slots)
    used = set()
    for name, p in part.named_parameters():
        key = f"temporal.{name}"
        t = tensors.get(key)
        if t is None or tuple(t.shape) != tuple(p.shape):
            got = "missing" if t is None else f"of shape {list(t.shape)}"
            raise ValueError(f"{source}: tensor {key!r} is {got}; expected {list(p.shape)}")
        with torch.no_grad():
            p.copy_(t)
        used.add(key)
    return part, used
