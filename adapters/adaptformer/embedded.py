"""The embedded default backbone: a small timm VisionTransformer pretrained on Fashion-MNIST.

It ships inside the package (``weights/embedded.safetensors``) so that everything works with no network.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from adaptformer.errors import AdaptformerError
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
# 28x28 input (Fashion-MNIST's own size), 4x4 patches: 49 tokens, average pooling; about 1.2M parameters.
EMBEDDED_CONFIG: dict[str, Any] = dict(
    img_size=28, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0, class_token=False, global_pool="avg"
)
EMBEDDED_SPEC = InputSpec(size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


def build_embedded(num_classes: int = 10) -> VisionTransformer:
    """The embedded architecture with random weights."""
    model = VisionTransformer(num_classes=num_classes, **EMBEDDED_CONFIG)
    model.pretrained_cfg = {  # type: ignore[assignment]  # timm sets this plain attribute on every model
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
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise AdaptformerError(
            f"{path} does not hold weights of the embedded architecture {EMBEDDED_CONFIG} ({first}); "
            "rebuild them with: python -m adaptformer.pretrain"
        ) from None
    if not with_head:
        model.reset_classifier(0)
    return model.eval()


def export_fashion_task(out: Path, weights: Path | None = None) -> Path:
    """Writes the backbone's own Fashion-MNIST head as the head-only (linear) task ``fashion``."""
    from adaptformer.adapter_file import save_adapter
    from adaptformer.data.sources import BUILTIN_NOTES
    from adaptformer.model import freeze_backbone

    meta = embedded_metadata(weights)
    model = load_embedded(weights, with_head=True)
    freeze_backbone(model)
    metrics = {"val_top1": float(meta["test_top1"]), "data": "fashion-mnist test set (10,000 images)"}
    description, input_note = BUILTIN_NOTES["fashion-mnist"]
    return save_adapter(model, out, task="fashion", labels=list(meta["labels"]), input_spec=EMBEDDED_SPEC,
                        metrics=metrics, backbone_name=EMBEDDED_NAME, description=description,
                        input_note=input_note)  # fmt: skip


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export the embedded backbone's head as the 'fashion' task.")
    parser.add_argument("--export-fashion-head", type=Path, required=True, metavar="OUT")
    print(export_fashion_task(parser.parse_args().export_fashion_head))
