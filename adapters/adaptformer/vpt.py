"""Visual Prompt Tuning (Jia et al., 2022), the prompt baseline: learnable tokens, frozen backbone."""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.model import base_vit, check_supported, freeze_backbone, image_tokens
from adaptformer.video import VideoViT

__all__ = ["PromptedViT", "add_prompts"]


class PromptedViT(nn.Module):
    """A frozen ViT (or video ViT) with ``num_tokens`` learnable prompt tokens after the prefix tokens.

    Shallow: prompts enter before the first block only. Deep: every block gets its own prompts, replacing
    the previous block's. Prompts are dropped before the final norm and pooling, so pooling sees the
    same tokens as the plain model.

    Args:
        model: A timm VisionTransformer or a :class:`VideoViT`.
        num_tokens: Prompt tokens per block.
        deep: One set of prompts per block instead of one at the input.
    """

    def __init__(self, model: nn.Module, num_tokens: int, deep: bool = False) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.model = model
        vit = check_supported(model)
        self.num_tokens = num_tokens
        self.deep = deep
        sets = len(vit.blocks) if deep else 1
        bound = math.sqrt(6.0 / float(3 * vit.patch_embed.patch_size[0] ** 2 + vit.embed_dim))
        self.prompts = nn.Parameter(torch.empty(sets, num_tokens, vit.embed_dim).uniform_(-bound, bound))
        freeze_backbone(model)

    @property
    def vit(self) -> VisionTransformer:
        return base_vit(self.model)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        tokens = self.model.embed(x) if isinstance(self.model, VideoViT) else image_tokens(vit, x)
        p, n, b = vit.num_prefix_tokens, self.num_tokens, x.shape[0]
        for i, block in enumerate(vit.blocks):
            if i == 0 or self.deep:
                rest = tokens[:, p + n :] if i > 0 else tokens[:, p:]
                tokens = torch.cat([tokens[:, :p], self.prompts[i if self.deep else 0].expand(b, -1, -1), rest], 1)
            tokens = block(tokens)
        tokens = torch.cat([tokens[:, :p], tokens[:, p + n :]], dim=1)
        return vit.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.forward_features(x))


def add_prompts(model: nn.Module, num_tokens: int, num_classes: int, deep: bool = False) -> PromptedViT:
    """VPT on ``model``: prompts and a new head train, everything else is frozen."""
    vit = check_supported(model)
    ref = next(vit.parameters())
    vit.reset_classifier(num_classes)
    vit.head.to(device=ref.device, dtype=ref.dtype)
    return PromptedViT(model, num_tokens, deep).to(device=ref.device)
