"""The embedded default backbone: a small timm VisionTransformer pretrained on Fashion-MNIST.

It ships inside the package (``weights/embedded.safetensors``) so that everything works with no network.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from adaptformer.preprocess import InputSpec

__all__ = [
    "EMBEDDED_CONFIG",
    "EMBEDDED_NAME",
    "EMBEDDED_SPEC",
    "build_embedded",
    "embedded_metadata",
    "embedded_weights_path",
    "load_embedded",
]

EMBEDDED_NAME = "adaptformer-embedded-vit"
# 32x32 input, 4x4 patches: 64 tokens + class token; about 1.2M parameters.
EMBEDDED_CONFIG = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0)
EMBEDDED_SPEC = InputSpec(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


def build_embedded(num_classes: int = 10) -> VisionTransformer:
    """The embedded architecture with random weights."""
    model = VisionTransformer(num_classes=num_classes, **EMBEDDED_CONFIG)
    model.pretrained_cfg = {
        "architecture": EMBEDDED_NAME,
        "input_size": (3, EMBEDDED_SPEC.size, EMBEDDED_SPEC.size),
        "mean": EMBEDDED_SPEC.mean,
        "std": EMBEDDED_SPEC.std,
        "interpolation": EMBEDDED_SPEC.interpolation,
    }
    return model


def embedded_weights_path() -> Path:
    return Path(str(resources.files("adaptformer") / "weights" / "embedded.safetensors"))


def embedded_metadata(path: Path | None = None) -> dict:
    """The metadata stored with the weights (training recipe, test accuracy, labels)."""
    path = path or embedded_weights_path()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: (json.loads(v) if v[:1] in "[{" else v) for k, v in meta.items()}


def load_embedded(path: Path | None = None, with_head: bool = True) -> VisionTransformer:
    """The embedded backbone with its pretrained weights, in eval mode.

    Args:
        path: Weights file; the one shipped in the package by default.
        with_head: Keep the 10-class Fashion-MNIST head (``False`` gives ``num_classes=0``).
    """
    path = path or embedded_weights_path()
    if not path.exists():
        raise FileNotFoundError(
            f"embedded weights not found at {path}; build them with: python -m adaptformer.pretrain"
        )
    state = load_file(str(path))
    model = build_embedded(num_classes=10)
    model.load_state_dict(state)
    if not with_head:
        model.reset_classifier(0)
    return model.eval()


def head_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    return {"head.weight": model.head.weight.detach(), "head.bias": model.head.bias.detach()}
