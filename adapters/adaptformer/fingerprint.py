"""Backbone fingerprint: a hash of the frozen weights an adapter was trained on."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from adaptformer.model import frozen_tensors

__all__ = ["backbone_fingerprint"]


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the frozen parameters (shape, dtype and bytes, in registration order), hex, 16 chars.

    Adapters and the head are excluded, so a model keeps its fingerprint when adapters are added, and a video
    model built with :func:`adaptformer.video_vit` shares its image ViT's fingerprint.
    """
    h = hashlib.sha256()
    for t in frozen_tensors(model):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()[:16]
