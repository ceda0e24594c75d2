"""Joint space-time ViT: an image ViT reads clips as tubelet tokens (VideoMAE style), sharing every weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.errors import UnsupportedModelError
from adaptformer.model import base_vit
from adaptformer.temporal import TemporalConfig, TemporalPart
from adaptformer.videomae import TubeletProjection, is_video_pretrained, sinusoid_table

__all__ = ["TemporalRows", "VideoViT", "clip_support", "video_vit"]

# Rows of a batch and the temporal part they use (``None`` rows: all; ``None`` part: the format-1 embedding).
TemporalRows = Sequence[tuple[slice | None, TemporalPart | None]]


def _sinusoid(positions: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine table ``[positions, dim]`` (the transformer's original position code)."""
    return sinusoid_table(positions, dim)


def clip_support(vit: nn.Module) -> str | None:
    """Why ``vit`` cannot read clips (``None`` when it can): the rule of :class:`VideoViT`, of ``BackboneSpec`` and
    of the engine."""
    if not isinstance(vit, VisionTransformer):  # Eva, Beit: rotary embedding / relative position bias
        return (
            f"clips need a VisionTransformer backbone; this {type(vit).__name__} takes images only (its blocks "
            "take positions on the 2D image grid)"
        )
    proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
    if is_video_pretrained(vit):  # its own kernel and position table
        return "video_vit needs a fixed input size" if getattr(vit, "dynamic_img_size", False) else None
    if not isinstance(proj, nn.Conv2d) or tuple(proj.kernel_size) != tuple(proj.stride):
        return "video_vit needs a ViT whose patch embedding is a Conv2d with stride = kernel"
    if getattr(vit, "pos_embed", None) is None or getattr(vit, "dynamic_img_size", False):
        return "video_vit needs a ViT with a fixed absolute position embedding"
    return None


class VideoViT(nn.Module):
    """Runs clips ``[batch, frames, 3, H, W]`` through an image ViT as one sequence of space-time tokens.

    The tubelet embedding is the ViT's own 2D patch projection inflated over ``tubelet`` frames (the 2D kernel
    divided by ``tubelet`` at each time step, so a still clip embeds like the image). Token positions are the
    ViT's spatial embedding plus a sine-cosine code of the time slot, scaled to the spatial embedding's RMS.
    Tokens: ``frames / tubelet * patches`` (+ prefix tokens), linear in the number of frames.

    The inflated kernel only sees the average of a tubelet's frames, so a clip task brings its own
    :class:`~adaptformer.temporal.TemporalPart` (``temporal``): a trainable temporal-difference kernel and/or
    time embedding, whose weights belong to the task. With a temporal part, slot 0's time code is zero (a
    one-frame clip embeds exactly like its image). Without one (``temporal=None``), the embedding is that of
    adapter format 1 (a time code whose slot 0 is not zero), kept so that old adapter files answer as before.
    The backbone stays the frozen image ViT and keeps its fingerprint either way.

    A video-pretrained backbone (VideoMAE, :mod:`adaptformer.videomae`: a :class:`TubeletProjection` in place of
    the patch projection) is not inflated: its own 3D kernel embeds the tubelets and its sine-cosine table over the
    flattened ``slots x h x w`` token positions is rebuilt for ``frames``; ``tubelet`` must be the kernel's. A
    task's temporal part works on it the same way (its difference kernel added to the projection, its learned
    time embedding added to the table).

    Args:
        vit: A timm VisionTransformer with a non-overlapping Conv2d patch embedding and absolute positions.
        frames: Frames per clip.
        tubelet: Frames per token.
        temporal: The task's temporal parts; ``None`` for the format-1 embedding.
    """

    def __init__(
        self, vit: VisionTransformer, frames: int, tubelet: int = 2, temporal: TemporalConfig | None = None
    ) -> None:
        super().__init__()
        why = clip_support(vit)
        if why:
            raise UnsupportedModelError(why)
        proj = vit.patch_embed.proj
        if frames < 1 or tubelet < 1 or frames % tubelet:
            raise ValueError(f"frames ({frames}) must be a positive multiple of tubelet ({tubelet})")
        self.native = isinstance(proj, TubeletProjection)
        if self.native and tubelet != proj.tubelet:
            raise ValueError(
                f"this video backbone's tubelet kernel spans {proj.tubelet} frames; its clip tasks use tubelet "
                f"{proj.tubelet}, not {tubelet}"
            )
        self._table: dict[tuple, torch.Tensor] = {}
        self.vit = vit
        self.frames = frames
        self.tubelet = tubelet
        self.time_slots = frames // tubelet
        self.temporal: TemporalPart | None = None
        if temporal is not None:
            ref = proj.weight
            part = TemporalPart(
                temporal,
                vit.embed_dim,
                (proj.kernel_size[0], proj.kernel_size[1]),
                proj.in_channels,
                tubelet,
                self.time_slots,
            )
            self.temporal = part.to(device=ref.device, dtype=ref.dtype)

    @property
    def num_tokens(self) -> int:
        return self.time_slots * self.vit.patch_embed.num_patches + self.vit.num_prefix_tokens

    def _spatial_pos(self) -> torch.Tensor:
        pos = self.vit.pos_embed
        assert pos is not None  # refused in __init__
        return pos if self.vit.no_embed_class else pos[:, self.vit.num_prefix_tokens :]

    def _prefix_pos(self, n: int) -> torch.Tensor:
        pos = self.vit.pos_embed
        assert pos is not None  # refused in __init__
        return pos[:, :n]

    def _positions(self, parts: TemporalRows, t: int, hw: int, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Inflated image ViT, per part: its spatial embedding + a time code, ``[1, t, hw, dim]``."""
        spatial = self._spatial_pos()
        if spatial.shape[1] != hw:
            raise ValueError(f"clip frames give {hw} patches; the backbone was built for {spatial.shape[1]}")
        d = x.shape[-1]
        rms = spatial.detach().pow(2).mean().sqrt()
        fixed = _sinusoid(t, d).to(x)
        positions: dict[int, torch.Tensor] = {}
        for _, part in parts:
            # Format 1 (no part) keeps its code, slot 0 not zero; a temporal part's fixed code is zero at slot 0.
            code = fixed * rms if part is None else part.time_code((fixed - fixed[:1]) * rms)
            positions[id(part)] = spatial.unsqueeze(1) + code.view(1, t, 1, d)
        return positions

    def _native_positions(self, parts: TemporalRows, t: int, hw: int, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Video backbone, per part: its sine-cosine table over ``t * hw`` tokens (+ the part's learned time code)."""
        grid = self.vit.patch_embed.num_patches
        if hw != grid:
            raise ValueError(f"clip frames give {hw} patches; the backbone was built for {grid}")
        d = x.shape[-1]
        key = (t, hw, d, x.device, x.dtype)
        if key not in self._table:
            self._table[key] = sinusoid_table(t * hw, d).to(x).view(1, t, hw, d)
        table = self._table[key]
        zero = torch.zeros(t, d, dtype=x.dtype, device=x.device)
        return {id(part): table if part is None else table + part.time_code(zero).view(1, t, 1, d) for _, part in parts}

    def _frame_kernel(self) -> torch.Tensor:
        """The frozen patch kernel per tubelet frame ``[dim, C, tubelet, ph, pw]`` (a temporal ``proj`` part's): a
        video backbone's 3D kernel, or an image ViT's 2D kernel at every frame."""
        weight = self.vit.patch_embed.proj.weight
        return weight if self.native else weight.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1)

    def embed(self, clips: torch.Tensor, parts: TemporalRows | None = None) -> torch.Tensor:
        """Clips ``[batch, frames, 3, H, W]`` to tokens ``[batch, tokens, dim]`` (before the blocks).

        Args:
            clips: The batch.
            parts: ``(rows, temporal part)`` pairs: each run of rows (a slice, or ``None`` for all) gets its
                task's temporal part (``None``: the format-1 embedding). Default: this model's own part on all rows.
        """
        if clips.ndim != 5 or clips.shape[1] != self.frames:
            raise ValueError(f"expected clips of shape [batch, {self.frames}, C, H, W], got {list(clips.shape)}")
        parts = [(None, self.temporal)] if parts is None else list(parts)
        vit = self.vit
        proj = vit.patch_embed.proj
        if isinstance(proj, TubeletProjection):
            x = proj.clips(clips.transpose(1, 2))
        else:
            weight = proj.weight.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1) / self.tubelet
            x = F.conv3d(clips.transpose(1, 2), weight, proj.bias, stride=(self.tubelet, *proj.stride))
        b, d, t, h, w = x.shape
        x = x.flatten(3).transpose(1, 2).transpose(2, 3)  # [batch, t, h * w, dim]
        kernel = self._frame_kernel() if any(p is not None and p.needs_kernel for _, p in parts) else None
        x = _per_rows(x, parts, lambda part, rows: _temporal_tokens(part, x[rows], clips[rows], kernel))
        x = vit.patch_embed.norm(x.reshape(b, t * h * w, d))  # time-major: [batch, t * h * w, dim]
        positions = self._native_positions(parts, t, h * w, x) if self.native else self._positions(parts, t, h * w, x)
        x = x.reshape(b, t, h * w, d)
        x = _per_rows(x, parts, lambda part, rows: x[rows] + positions[id(part)])
        x = x.reshape(b, t * h * w, d)
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            if not vit.no_embed_class:
                tokens = tokens + self._prefix_pos(tokens.shape[1])
            x = torch.cat([tokens, x], dim=1)
        x = vit.pos_drop(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.embed(clips)
        x = self.vit.blocks(x)
        return self.vit.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.vit.forward_head(x, pre_logits=pre_logits)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(clips))


def video_vit(model: nn.Module, frames: int, tubelet: int = 2, temporal: TemporalConfig | None = None) -> VideoViT:
    """Turns an image ViT into a joint space-time ViT over clips of ``frames`` frames (weights shared).

    ``temporal`` gives the model a trainable temporal part (a task's own weights); ``None`` keeps the
    parameter-free embedding of adapter format 1.
    """
    return VideoViT(base_vit(model), frames=frames, tubelet=tubelet, temporal=temporal)


def _temporal_tokens(
    part: TemporalPart | None, x: torch.Tensor, clips: torch.Tensor, kernel: torch.Tensor | None
) -> torch.Tensor:
    """Patch tokens ``[n, t, patches, dim]`` of ``clips`` with the part's difference kernels and slot filter."""
    if part is None:
        return x
    delta = part.projection_delta(clips, kernel)
    if delta is not None:
        x = x + delta.flatten(3).transpose(1, 2).transpose(2, 3)
    return part.mix_slots(x)


def _per_rows(x: torch.Tensor, parts: TemporalRows, fn) -> torch.Tensor:
    """``fn(part, rows)`` for each run of rows, put together in row order (one call for a whole batch)."""
    if len(parts) == 1 and parts[0][0] is None:
        return fn(parts[0][1], slice(None))
    out = x.clone()
    for rows, part in parts:
        rows = slice(None) if rows is None else rows
        out[rows] = fn(part, rows)
    return out
