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
- ``low`` (format 3): the ``diff`` kernel factorised as ``up @ down``, ``down`` ``[rank, C * tubelet * ph * pw]``
  (random at init) and ``up`` ``[dim, rank]`` (zero at init): ``rank * (dim + C * tubelet * ph * pw)`` weights
  instead of ``dim * C * tubelet * ph * pw`` (0.14% of ViT-S/16 at rank 16 instead of 2.7%).
- ``proj`` (format 3): the frame differences through the backbone's own frozen patch kernel (frame ``k`` of a
  tubelet through its slice of the kernel), scaled per channel and tubelet frame by ``[tubelet, dim]`` weights,
  zero at init.

Every part is zero for a still clip, and slot 0's fixed time code is zero too, so a one-frame clip embeds like
its image. The frozen backbone is untouched: these weights belong to the task, not to the backbone fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FORMAT3_PARTS", "LOW_RANK", "TEMPORAL_PARTS", "TemporalConfig", "TemporalPart", "temporal_from_tensors"]

TEMPORAL_PARTS = ("diff", "time", "mix", "low", "proj")
# Parts an adapter file of format 2 cannot hold: a file with one of them is written as format 3.
FORMAT3_PARTS = ("low", "proj")
# Rank of a new ``low`` kernel (a loaded one keeps the rank of its tensors). 16: on the small-data recipe it comes
# within 0.02 (zoom-rotate) and 0.04 (motion) of diff's mean val top-1 over 4 seeds, where rank-4 low+proj trailed
# by 0.17 and 0.16 over 2 (docs/benchmarks/temporal_parts.md); 0.14% of ViT-S/16, 0.30% of the embedded backbone.
LOW_RANK = 16


@dataclass(frozen=True)
class TemporalConfig:
    """Which temporal parts a clip task has.

    Args:
        diff: Temporal-difference kernel on the tubelet embedding.
        time: Learned per-slot time embedding (slot 0 excluded).
        mix: Depthwise difference filter across time slots.
        low: Low-rank temporal-difference kernel (format 3).
        proj: Frame differences through the frozen patch kernel, scaled per channel (format 3).
    """

    diff: bool = True
    time: bool = False
    mix: bool = False
    low: bool = False
    proj: bool = False

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
        return json.dumps(self.to_dict())

    def to_dict(self) -> dict[str, bool]:
        """The metadata map: the format-2 keys always, a format-3 part's key only when it is on (so that a file
        without one stays readable as format 2)."""
        return {n: v for n, v in asdict(self).items() if v or n not in FORMAT3_PARTS}

    @property
    def format3(self) -> bool:
        """Whether an adapter file must be of format 3 to hold these parts."""
        return any(getattr(self, n) for n in FORMAT3_PARTS)

    @classmethod
    def from_dict(cls, d: dict) -> TemporalConfig:
        if not isinstance(d, dict) or not all(isinstance(d.get(n, False), bool) for n in TEMPORAL_PARTS):
            raise ValueError(f"temporal config must map {', '.join(TEMPORAL_PARTS)} to booleans, got {d!r}")
        unknown = sorted(set(d) - set(TEMPORAL_PARTS) - {"patch"})
        if unknown:
            raise ValueError(
                f"temporal parts {unknown} are unknown to this version (it knows {', '.join(TEMPORAL_PARTS)})"
            )
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
        rank: Rank of the ``low`` kernel.
    """

    def __init__(
        self,
        config: TemporalConfig,
        dim: int,
        patch: tuple[int, int],
        in_chans: int,
        tubelet: int,
        slots: int,
        rank: int = LOW_RANK,
    ) -> None:
        super().__init__()
        self.config = config
        self.tubelet = tubelet
        self.slots = slots
        self.patch = tuple(patch)
        self.diff = nn.Parameter(torch.zeros(dim, in_chans, tubelet, *patch)) if config.diff else None
        self.time = nn.Parameter(torch.zeros(slots - 1, dim)) if config.time and slots > 1 else None
        self.mix = nn.Parameter(torch.zeros(2, dim)) if config.mix else None
        self.low_down: nn.Parameter | None = None
        self.low_up: nn.Parameter | None = None
        if config.low:
            fan_in = in_chans * tubelet * patch[0] * patch[1]
            # up is zero (a fresh part changes nothing); down is random so that up's gradient is not zero.
            self.low_down = nn.Parameter(torch.randn(rank, fan_in) / fan_in**0.5)
            self.low_up = nn.Parameter(torch.zeros(dim, rank))
        self.proj = nn.Parameter(torch.zeros(tubelet, dim)) if config.proj else None

    @property
    def needs_kernel(self) -> bool:
        """Whether :meth:`projection_delta` needs the backbone's frozen patch kernel (the ``proj`` part)."""
        return self.proj is not None

    def projection_delta(self, clips: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor | None:
        """What ``diff``, ``low`` and ``proj`` add to the patch projection: ``[n, dim, slots, h, w]`` for clips
        ``[n, T, C, H, W]``; ``kernel`` is the frozen patch kernel per tubelet frame ``[dim, C, tubelet, ph, pw]``
        (needed by ``proj`` only)."""
        if self.diff is None and self.low_up is None and self.proj is None:
            return None
        steps = clips.diff(dim=1)  # [n, T - 1, C, H, W]
        steps = torch.cat([torch.zeros_like(clips[:, :1]), steps], dim=1).transpose(1, 2)
        stride = (self.tubelet, *self.patch)
        out: torch.Tensor | None = None
        if self.diff is not None:
            out = F.conv3d(steps, self.diff.to(steps.dtype), stride=stride)
        if self.low_up is not None and self.low_down is not None:
            shape = (self.low_down.shape[0], steps.shape[1], self.tubelet, *self.patch)
            codes = F.conv3d(steps, self.low_down.to(steps.dtype).view(shape), stride=stride)
            low = torch.einsum("dr,nrthw->ndthw", self.low_up.to(steps.dtype), codes)
            out = low if out is None else out + low
        if self.proj is not None:
            if kernel is None:
                raise ValueError("the 'proj' temporal part needs the backbone's patch kernel")
            kernel = kernel.to(steps.dtype)
            for k in range(self.tubelet):
                frame = F.conv3d(steps[:, :, k :: self.tubelet], kernel[:, :, k : k + 1], stride=(1, *self.patch))
                term = frame * self.proj[k].to(steps.dtype).view(1, -1, 1, 1, 1)
                out = term if out is None else out + term
        return out

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
        if self.low_down is not None and self.low_up is not None:
            fan_in = in_chans * self.tubelet * patch[0] * patch[1]
            if self.low_up.shape[0] != dim or self.low_down.shape[1] != fan_in or self.patch != tuple(patch):
                return (
                    f"its low-rank temporal kernel is [{self.low_up.shape[0]}, rank] x [rank, "
                    f"{self.low_down.shape[1]}] for patch {list(self.patch)}; the backbone needs [{dim}, rank] x "
                    f"[rank, {fan_in}] for patch {list(patch)}"
                )
        if self.proj is not None and self.patch != tuple(patch):
            return f"its temporal part was trained for patch {list(self.patch)}; the backbone has {list(patch)}"
        for name in ("time", "mix", "proj"):
            p = getattr(self, name)
            if p is not None and p.shape[-1] != dim:
                return f"its temporal {name} weights have width {p.shape[-1]}; the backbone's tokens have {dim}"
        return None

    def metadata(self) -> dict:
        """The adapter file's ``temporal`` metadata: the parts, and the patch size when a format-3 part has one."""
        out: dict = self.config.to_dict()
        if self.config.format3:
            out["patch"] = list(self.patch)
        return out

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
    widths = ("temporal.time", "temporal.mix", "temporal.proj")
    dims = [t.shape[-1] for t in (tensors.get(k) for k in widths) if t is not None and t.ndim]
    rank = LOW_RANK
    patch = _patch(config, source) if cfg.low or cfg.proj else (1, 1)
    if diff is not None and cfg.diff:
        dim, channels, patch = int(diff.shape[0]), int(diff.shape[1]), (int(diff.shape[3]), int(diff.shape[4]))
    else:
        dim, channels = (dims[0] if dims else 1), 3
    if cfg.low:
        up, down = tensors.get("temporal.low_up"), tensors.get("temporal.low_down")
        area = tubelet * patch[0] * patch[1]
        if up is None or down is None or up.ndim != 2 or down.ndim != 2 or down.shape[1] % area:
            raise ValueError(
                f"{source}: tensors 'temporal.low_up' [dim, rank] and 'temporal.low_down' "
                f"[rank, channels * {tubelet} * {patch[0]} * {patch[1]}] are missing or misshapen"
            )
        dim, rank, channels = int(up.shape[0]), int(up.shape[1]), int(down.shape[1]) // area
    part = TemporalPart(cfg, dim, patch, channels, tubelet, slots, rank=rank)
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


def _patch(config: dict, source: str) -> tuple[int, int]:
    """The patch size a ``low``/``proj`` part records in its metadata (``"patch": [ph, pw]``)."""
    patch = config.get("patch")
    if not (isinstance(patch, list) and len(patch) == 2 and all(type(v) is int and 0 < v <= 1024 for v in patch)):
        raise ValueError(f"{source}: temporal metadata needs 'patch' as [ph, pw] for its low/proj parts")
    return int(patch[0]), int(patch[1])
