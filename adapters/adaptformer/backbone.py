"""Resolving a backbone by name: the embedded default, any timm ViT (hub weights or a local file), or a VideoMAE
checkpoint (a local file or Hugging Face model folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from timm.models.vision_transformer import VisionTransformer

from adaptformer.embedded import EMBEDDED_NAME, EMBEDDED_SPEC, load_embedded
from adaptformer.errors import AdaptformerError
from adaptformer.model import check_supported
from adaptformer.preprocess import InputSpec, spec_from_model
from adaptformer.videomae import VIDEOMAE_NAMES, is_videomae, load_videomae

__all__ = ["EMBEDDED", "Backbone", "load_backbone", "resolve_device"]

EMBEDDED = "embedded"


@dataclass
class Backbone:
    """A frozen-to-be ViT with its name and input specification."""

    model: VisionTransformer
    name: str
    spec: InputSpec


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise AdaptformerError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_backbone(name: str = EMBEDDED, weights: str | Path | None = None) -> Backbone:
    """Builds the backbone without a head, in eval mode.

    Args:
        name: ``embedded`` (the shipped default), a timm model name such as ``vit_small_patch16_224``, or
            ``videomae`` / ``videomae-small|base|large|huge`` (a video-pretrained ViT, :mod:`adaptformer.videomae`).
        weights: Local weights (safetensors or a PyTorch state dict; for VideoMAE also a Hugging Face model
            folder, and required). Without it, a timm name downloads its pretrained weights through timm (needs a
            network).

    Raises:
        AdaptformerError: unknown name, unreadable weights, or no network to fetch hub weights.
    """
    if name in (EMBEDDED, EMBEDDED_NAME):
        model = load_embedded(Path(weights) if weights else None, with_head=False)
        return Backbone(model, EMBEDDED_NAME, EMBEDDED_SPEC)
    if is_videomae(name):
        if weights is None:
            raise AdaptformerError(
                f"backbone {name!r} loads a local VideoMAE checkpoint: pass --weights FILE (original or Hugging Face "
                "layout) or a Hugging Face model folder (config.json + weights); nothing is downloaded"
            )
        video = load_videomae(weights, name)
        check_supported(video)
        return Backbone(video, name, spec_from_model(video))
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise AdaptformerError(
            f"unknown backbone {name!r}: use 'embedded', a timm ViT name (see timm.list_models('vit_*')) or "
            f"{', '.join(VIDEOMAE_NAMES)} with --weights"
        )
    try:
        model = cast(VisionTransformer, timm.create_model(name, pretrained=weights is None, num_classes=0))
    except Exception as e:  # timm raises several types for missing networks or weights
        raise AdaptformerError(
            f"cannot fetch pretrained weights for {name!r} ({type(e).__name__}: {e}); "
            "offline, pass --weights FILE with a local checkpoint"
        ) from None
    if weights is not None:
        state = {k: v for k, v in _read_state(Path(weights)).items() if not k.startswith("head.")}
        own = model.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise AdaptformerError(
                f"weights {weights} do not fit {name}: {len(wrong)} tensors of other shapes, e.g. {wrong[0]} "
                f"{tuple(state[wrong[0]].shape)} where {name} has {tuple(own[wrong[0]].shape)}"
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise AdaptformerError(
                f"weights {weights} do not fit {name}: missing {missing[:3]}..., unexpected {unexpected[:3]}..."
            )
    check_supported(model)
    return Backbone(model.eval(), name, spec_from_model(model))


def resolve_device(name: str) -> torch.device:
    """The device a ``--device`` value names: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda``...

    Raises:
        ValueError: a CUDA device asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(name)
