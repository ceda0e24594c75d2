"""Joint space-time ViT: an image ViT reads clips as tubelet tokens (VideoMAE style), sharing every weight."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.errors import UnsupportedModelError
from adaptformer.model import base_vit

__all__ = ["VideoViT", "video_vit"]


def _sinusoid(positions: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine table ``[positions, dim]`` (the transformer's original position code)."""
    pos = torch.arange(positions, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


class VideoViT(nn.Module):
    """Runs clips ``[batch, frames, 3, H, W]`` through an image ViT as one sequence of space-time tokens.

    The tubelet embedding is the ViT's own 2D patch projection inflated over ``tubelet`` frames (the 2D kernel
    divided by ``tubelet`` at each time step, so a still clip embeds like the image). Token positions are the
    ViT's spatial embedding plus a fixed sine-cosine code of the time slot, scaled to the spatial embedding's
    RMS. Tokens: ``frames / tubelet * patches`` (+ prefix tokens), linear in the number of frames. Nothing
    here is a new trainable weight, so the backbone stays the frozen image ViT and its fingerprint.

    Args:
        vit: A timm VisionTransformer with a non-overlapping Conv2d patch embedding and absolute positions.
        frames: Frames per clip.
        tubelet: Frames per token.
    """

    def __init__(self, vit: VisionTransformer, frames: int, tubelet: int = 2) -> None:
        super().__init__()
        proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
        if not isinstance(proj, nn.Conv2d) or tuple(proj.kernel_size) != tuple(proj.stride):
            raise UnsupportedModelError("video_vit needs a ViT whose patch embedding is a Conv2d with stride = kernel")
        if vit.pos_embed is None or getattr(vit, "dynamic_img_size", False):
            raise UnsupportedModelError("video_vit needs a ViT with a fixed absolute position embedding")
        if frames < 1 or tubelet < 1 or frames % tubelet:
            raise ValueError(f"frames ({frames}) must be a positive multiple of tubelet ({tubelet})")
        self.vit = vit
        self.frames = frames
        self.tubelet = tubelet
        self.time_slots = frames // tubelet

    @property
    def num_tokens(self) -> int:
        return self.time_slots * self.vit.patch_embed.num_patches + self.vit.num_prefix_tokens

    def _spatial_pos(self) -> torch.Tensor:
        pos = self.vit.pos_embed
        return pos if self.vit.no_embed_class else pos[:, self.vit.num_prefix_tokens :]

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips ``[batch, frames, 3, H, W]`` to tokens ``[batch, tokens, dim]`` (before the blocks)."""
        if clips.ndim != 5 or clips.shape[1] != self.frames:
            raise ValueError(f"expected clips of shape [batch, {self.frames}, C, H, W], got {list(clips.shape)}")
        vit = self.vit
        proj = vit.patch_embed.proj
        weight = proj.weight.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1) / self.tubelet
        x = F.conv3d(clips.transpose(1, 2), weight, proj.bias, stride=(self.tubelet, *proj.stride))
        b, d, t, h, w = x.shape
        x = x.flatten(3).permute(0, 2, 3, 1).reshape(b, t * h * w, d)  # time-major: [batch, t * h * w, dim]
        x = vit.patch_embed.norm(x)
        spatial = self._spatial_pos()
        if spatial.shape[1] != h * w:
            raise ValueError(f"clip frames give {h}x{w} patches; the backbone was built for {spatial.shape[1]}")
        temporal = _sinusoid(t, d).to(x) * spatial.detach().pow(2).mean().sqrt()
        x = x + (spatial.unsqueeze(1) + temporal.view(1, t, 1, d)).reshape(1, t * h * w, d)
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            tokens = torch.cat(prefix, dim=1)
            if not vit.no_embed_class:
                tokens = tokens + vit.pos_embed[:, : tokens.shape[1]]
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


def video_vit(model: nn.Module, frames: int, tubelet: int = 2) -> VideoViT:
    """Turns an image ViT into a joint space-time ViT over clips of ``frames`` frames (weights shared)."""
    return VideoViT(base_vit(model), frames=frames, tubelet=tubelet)
