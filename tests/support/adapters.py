"""Backbones and adapter files with random weights (nothing is downloaded): a tiny ViT, the embedded
architecture saved as a weights file, and tasks whose trainable weights are redrawn from a seed."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import adaptformer as af
from adaptformer.adapter_file import task_to_bytes
from adaptformer.embedded import build_embedded
from adaptformer.preprocess import spec_from_model
from adaptformer.task import TaskAdapter

__all__ = [
    "CLIP_FRAMES",
    "adapter_bytes",
    "embedded_backbone",
    "make_task",
    "tiny_vit",
    "upload_files",
]

CLIP_FRAMES = 4  # frames of a clip task made with ``clip=True``


def tiny_vit(seed: int = 0, **kw: int) -> VisionTransformer:
    """A random 2-block ViT on 32x32 inputs (fast on a CPU)."""
    torch.manual_seed(seed)
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    cfg.update(kw)
    vit = VisionTransformer(**cfg).eval()
    vit.pretrained_cfg = {"architecture": "tiny-test-vit"}  # extract_task reads the name from it
    return vit


def embedded_backbone(weights: Path | None = None, seed: int = 0) -> torch.nn.Module:
    """The embedded architecture with random weights (``seed``), its 10-class state saved to ``weights`` (when
    given) for a server's ``--weights``; returns the same backbone without its head (adapters made on it fit the
    server)."""
    torch.manual_seed(seed)
    model = build_embedded(num_classes=10).eval()
    if weights is not None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    vit = copy.deepcopy(model)
    vit.reset_classifier(0)
    return vit


def make_task(
    vit: torch.nn.Module,
    name: str,
    *,
    num_classes: int = 4,
    seed: int = 1,
    scale: float = 0.5,
    bottleneck: int = 8,
    clip: bool = False,
    frames: int = CLIP_FRAMES,
    winner: int | None = None,
    linear: bool = False,
    labels: Sequence[str] | None = None,
) -> TaskAdapter:
    """A task on ``vit`` whose trainable weights are random (``randn * scale`` from ``seed``), so its scores
    depend on every pixel.

    Args:
        clip: A clip task of ``frames`` frames (tubelet 2).
        winner: That class wins on every input (its head bias gets +1000): the answer names the file.
        linear: A linear probe (a head only) instead of adapters.
        labels: Default ``<name>-<i>``.
    """
    model = copy.deepcopy(vit)
    if linear:
        af.linear_probe(model, num_classes)
    else:
        af.add_adapters(model, af.AdapterConfig(bottleneck=bottleneck), num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        if winner is not None:
            model.head.bias[winner] += 1000.0
    spec = spec_from_model(vit)
    if clip:
        spec = spec.as_clip(frames=frames, tubelet=2)
    labels = list(labels) if labels is not None else [f"{name}-{i}" for i in range(num_classes)]
    return af.extract_task(model, name, labels=labels, input_spec=spec)


def adapter_bytes(vit: torch.nn.Module, name: str, **kw: object) -> bytes:
    """The adapter file of :func:`make_task`."""
    return task_to_bytes(make_task(vit, name, **kw))  # type: ignore[arg-type]


def upload_files(data: bytes, task: str | None = None) -> dict:
    """httpx keyword arguments of ``POST /adapters`` with ``data`` as the file (and ``task`` as the form field)."""
    kw: dict = {"files": {"file": ("adapter.safetensors", data, "application/octet-stream")}}
    if task is not None:
        kw["data"] = {"task": task}
    return kw
