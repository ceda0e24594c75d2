"""Injection of AdaptMLP branches into timm VisionTransformers, freezing, and the parameter report."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from adaptformer.config import AdapterConfig
from adaptformer.errors import UnsupportedModelError
from adaptformer.layer import AdaptedBlock, AdaptMLP

__all__ = [
    "ParameterReport",
    "add_adapters",
    "base_vit",
    "check_supported",
    "freeze_backbone",
    "image_tokens",
    "is_task_parameter",
    "linear_probe",
    "remove_adapters",
    "trainable_parameters",
]

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def base_vit(model: nn.Module) -> VisionTransformer:
    """The timm VisionTransformer inside ``model`` (itself, or the image ViT of a video model)."""
    vit = getattr(model, "vit", model)
    if not isinstance(vit, VisionTransformer):
        name = getattr(getattr(model, "pretrained_cfg", {}), "get", lambda *_: None)("architecture")
        raise UnsupportedModelError(
            f"{name or type(model).__name__} is not a timm VisionTransformer; AdaptFormer adapters go into "
            "timm's VisionTransformer family (vit_*, deit_*, ...)"
        )
    return vit


def check_supported(model: nn.Module) -> VisionTransformer:
    """Returns the ViT if every block is a pre-norm timm ``Block``; raises a clear error otherwise."""
    vit = base_vit(model)
    cfg: dict = getattr(vit, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    name = name or type(vit).__name__
    for i, blk in enumerate(vit.blocks):
        inner = blk.block if isinstance(blk, AdaptedBlock) else blk
        if not isinstance(inner, Block) or not all(hasattr(inner, p) for p in _BLOCK_PARTS):
            raise UnsupportedModelError(
                f"{name}: block {i} is a {type(inner).__name__}, not a pre-norm timm Block "
                "(x + attn(norm1(x)), then x + mlp(norm2(x))); AdaptFormer cannot be placed beside its MLP. "
                "Supported: timm VisionTransformers built with the default block_fn."
            )
    return vit


def image_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Images ``[batch, 3, H, W]`` to the tokens the first block sees (patches, prefix tokens, positions)."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def is_task_parameter(name: str) -> bool:
    """Whether a parameter name (relative to the ViT) belongs to a task: an adapter or the head."""
    return name.startswith("head.") or ".adapter." in name


def freeze_backbone(model: nn.Module) -> None:
    """Only adapter and head parameters keep ``requires_grad``."""
    vit = base_vit(model)
    for name, p in vit.named_parameters():
        p.requires_grad_(is_task_parameter(name))


def add_adapters(model: nn.Module, config: AdapterConfig | None = None, num_classes: int | None = None) -> nn.Module:
    """Adds AdaptMLP branches to ``model`` in place, freezes the backbone and (optionally) sets a new head.

    Args:
        model: A timm VisionTransformer, or a video model from :func:`adaptformer.video_vit`.
        config: Branch configuration; the paper's defaults when omitted.
        num_classes: Size of a new, trainable classification head. ``None`` keeps the current head
            (trainable too).

    Returns:
        The same ``model``, adapted.
    """
    config = config or AdapterConfig()
    vit = check_supported(model)
    if any(isinstance(b, AdaptedBlock) for b in vit.blocks):
        raise ValueError("model already has adapters; call remove_adapters(model) first")
    layers = config.resolve_layers(len(vit.blocks))
    ref = next(vit.parameters())
    for i in layers:
        adapter = AdaptMLP(vit.embed_dim, config).to(device=ref.device, dtype=ref.dtype)
        vit.blocks[i] = AdaptedBlock(vit.blocks[i], adapter)
    if num_classes is not None:
        vit.reset_classifier(num_classes)
        vit.head.to(device=ref.device, dtype=ref.dtype)
    model.adapter_config = config  # type: ignore[assignment]
    freeze_backbone(model)
    return model


def linear_probe(model: nn.Module, num_classes: int) -> nn.Module:
    """Linear probing: a new head on the frozen backbone, nothing else trains."""
    vit = check_supported(model)
    ref = next(vit.parameters())
    vit.reset_classifier(num_classes)
    vit.head.to(device=ref.device, dtype=ref.dtype)
    freeze_backbone(model)
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Unwraps every adapted block, giving back the plain backbone (the head stays)."""
    vit = base_vit(model)
    for i, blk in enumerate(vit.blocks):
        if isinstance(blk, AdaptedBlock):
            vit.blocks[i] = blk.block
    if hasattr(model, "adapter_config"):
        del model.adapter_config
    return model


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts of an adapted model.

    Attributes:
        backbone: Frozen parameters (everything but adapters and head).
        adapters: Parameters of the AdaptMLP branches.
        head: Parameters of the classification head.
        trainable: Parameters with ``requires_grad`` (adapters + head unless changed by hand).
    """

    backbone: int
    adapters: int
    head: int
    trainable: int

    @property
    def percent_of_backbone(self) -> float:
        return 100.0 * self.trainable / max(self.backbone, 1)

    @property
    def adapters_percent(self) -> float:
        return 100.0 * self.adapters / max(self.backbone, 1)

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} ({self.percent_of_backbone:.2f}% of the {self.backbone:,}-parameter "
            f"backbone): adapters {self.adapters:,} ({self.adapters_percent:.2f}%), head {self.head:,}"
        )


def trainable_parameters(model: nn.Module) -> ParameterReport:
    """Counts frozen, adapter, head and trainable parameters."""
    params = dict(model.named_parameters())
    vit = base_vit(model)
    prefix = "vit." if vit is not model else ""
    backbone = adapters = head = 0
    for name, p in params.items():
        rel = name[len(prefix) :] if name.startswith(prefix) else name
        if rel.startswith("head."):
            head += p.numel()
        elif ".adapter." in rel:
            adapters += p.numel()
        else:
            backbone += p.numel()
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return ParameterReport(backbone=backbone, adapters=adapters, head=head, trainable=trainable)


def frozen_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The frozen parameters in registration order (what the backbone fingerprint hashes)."""
    vit = base_vit(model)
    return [p for name, p in vit.named_parameters() if not is_task_parameter(name)]
