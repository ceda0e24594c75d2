"""Injection of AdaptMLP branches into timm ViTs (VisionTransformer, Eva, Beit), freezing, and the parameter
report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from adaptformer.config import AdapterConfig
from adaptformer.errors import UnsupportedModelError
from adaptformer.layer import AdaptedBlock, AdaptMLP, block_family

__all__ = [
    "ParameterReport",
    "add_adapters",
    "base_vit",
    "block_inputs",
    "check_supported",
    "freeze_backbone",
    "image_tokens",
    "is_task_parameter",
    "linear_probe",
    "remove_adapters",
    "trainable_parameters",
]

BlockArgs = dict[str, object]

# Model classes whose blocks are not of a supported family, and why (the refusal names the reason).
_REFUSED = {
    "VisionTransformerRelPos": "its blocks (RelPosBlock, ResPostRelPosBlock) take a shared relative position bias and "
    "some are post-norm; no block family is described for them",
    "NaFlexVit": "it embeds variable-resolution patch sequences with a per-sample patch mask, not the fixed "
    "[batch, tokens, dim] image tokens the engine batches",
}


def _model_classes() -> tuple[type, ...]:
    from timm.models.beit import Beit
    from timm.models.eva import Eva

    return (VisionTransformer, Eva, Beit)


def _name(model: nn.Module) -> str:
    cfg: dict = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def base_vit(model: nn.Module) -> VisionTransformer:
    """The timm model inside ``model`` (itself, or the image ViT of a video model): a ``VisionTransformer``, an
    ``Eva`` (EVA-02, Perception Encoder) or a ``Beit``.

    Typed as ``VisionTransformer``: what the library reads of it (``blocks``, ``embed_dim``, ``num_features``,
    ``patch_embed``, ``norm``, ``forward_head``, ``reset_classifier``) every supported class has.
    """
    vit = getattr(model, "vit", model)
    if not isinstance(vit, _model_classes()):
        why = _REFUSED.get(type(vit).__name__)
        raise UnsupportedModelError(
            f"{_name(vit)} is a {type(vit).__name__}"
            + (f", which AdaptFormer does not support: {why}" if why else ", not a supported timm model")
            + "; AdaptFormer adapters go into timm's VisionTransformer (vit_*, deit_*, ...), Eva (eva02_*, "
            "vit_pe_*) and Beit (beit_*, beitv2_*) families"
        )
    return cast(VisionTransformer, vit)


def check_supported(model: nn.Module) -> VisionTransformer:
    """Returns the model if every block is a pre-norm block of a supported family; raises a clear error otherwise.

    Families (:func:`adaptformer.layer.block_family`): timm ViT ``Block``, ``EvaBlock``, Beit ``Block``. Post-norm
    blocks (``ResPostBlock`` of the ``*_rpn_*`` ViTs, ``EvaBlockPostNorm``) and parallel blocks have no
    ``norm2(x')`` beside which the branch sits and are refused with that reason.
    """
    vit = base_vit(model)
    name = _name(vit)
    for i, blk in enumerate(vit.blocks):
        inner = blk.block if isinstance(blk, AdaptedBlock) else blk
        if block_family(inner) is None:
            raise UnsupportedModelError(
                f"{name}: block {i} is a {type(inner).__name__}, not a pre-norm timm block "
                "(x' = x + attn(norm1(x)), then x' + mlp(norm2(x'))); AdaptFormer cannot be placed beside its MLP. "
                "Supported: timm VisionTransformers built with the default block_fn, Eva models with EvaBlock "
                "(not use_post_norm) and Beit models."
            )
    return vit


def block_inputs(vit: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[BlockArgs]]:
    """Images ``[batch, 3, H, W]`` to the tokens the first block sees and what the model gives each block.

    Through the model's own functions: a ViT's ``_pos_embed`` (no block arguments); Eva's ``_pos_embed``, which
    builds the rotary embedding for this input (one per block for ``rope_mixed``); Beit's patch embedding, class
    token, absolute positions and its shared relative position bias (``rel_pos_bias()``, built per forward).
    """
    from timm.models.beit import Beit
    from timm.models.eva import Eva

    depth = len(cast(nn.Sequential, vit.blocks))
    if isinstance(vit, Eva):
        tokens, rope = vit._pos_embed(vit.patch_embed(x))
        tokens = vit.norm_pre(tokens)
        if getattr(vit, "rope_mixed", False) and rope is not None:
            return tokens, [{"rope": rope[i]} for i in range(depth)]
        return tokens, [{"rope": rope}] * depth
    if isinstance(vit, Beit):
        tokens = vit.patch_embed(x)
        tokens = torch.cat((vit.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        if vit.pos_embed is not None:
            tokens = tokens + vit.pos_embed
        tokens = vit.pos_drop(tokens)
        bias = vit.rel_pos_bias() if vit.rel_pos_bias is not None else None
        return tokens, [{"shared_rel_pos_bias": bias}] * depth
    return image_tokens(cast(VisionTransformer, vit), x), [{}] * depth


def image_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Images ``[batch, 3, H, W]`` to the tokens the first block of a ViT sees (patches, prefix tokens, positions).

    Raises:
        UnsupportedModelError: ``vit`` is an Eva or Beit, whose blocks need more than tokens (use
            :func:`block_inputs`).
    """
    if not isinstance(vit, VisionTransformer):
        raise UnsupportedModelError(
            f"{_name(vit)}: its blocks take position inputs besides the tokens (rotary embedding or relative "
            "position bias), so token-only paths (prompt tuning, clips) do not run on it; AdaptFormer adapters do"
        )
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
