"""Tiny random-weight timm ViTs and small utilities for the library's unit tests (nothing is ever downloaded)."""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

import adaptformer as af

IMG = 32  # image side of the tiny models: 4x4 patches of 8 pixels

# The unit tests' "pets" adapter (tests/unit/conftest.py: pets_model, pets_file): non-zero adapters on the first and
# the last block, a learnable scale, an own LayerNorm, a 3-class head.
PETS_LABELS = ["cat", "dog", "emu"]
PETS_METRICS = {"top1": 0.875, "epochs": 3}
PETS_CONFIG = af.AdapterConfig(bottleneck=8, scale=0.5, learnable_scale=True, layers=[0, -1], adapter_input="own_ln")

# Named backbones the tests run on: timm model name and overrides (small image size keeps them fast).
BACKBONES: dict[str, tuple[str, dict]] = {
    "tiny-custom": ("vit_tiny_patch16_224", {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4}),
    "vit_tiny": ("vit_tiny_patch16_224", {}),
    "vit_small": ("vit_small_patch16_224", {}),
    "deit_small": ("deit_small_patch16_224", {}),
    "no-class-token": (
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "class_token": False, "global_pool": "avg"},
    ),
    "layer-scale": (
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "init_values": 1e-5},
    ),
    "registers": (
        "vit_tiny_patch16_224",
        {"patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 4, "reg_tokens": 4, "no_embed_class": True},
    ),
}


def make_vit(kind: str = "tiny-custom", seed: int = 0, num_classes: int = 5, **overrides: object) -> nn.Module:
    """A random-weight timm ViT of a named kind at ``IMG`` pixels, in eval mode."""
    name, kwargs = BACKBONES[kind]
    torch.manual_seed(seed)
    args = {"img_size": IMG, "num_classes": num_classes, **kwargs, **overrides}
    return timm.create_model(name, pretrained=False, **args).eval()


def images(n: int, seed: int = 1, size: int = IMG) -> torch.Tensor:
    """A batch of ``n`` random images ``[n, 3, size, size]``."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def clips(n: int, frames: int, seed: int = 2, size: int = IMG) -> torch.Tensor:
    """A batch of ``n`` random clips ``[n, frames, 3, size, size]``."""
    return torch.randn(n, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Gives every AdaptMLP non-zero weights (up projection, biases, own norm) so each branch matters."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, af.AdaptMLP):
            for name, p in module.named_parameters():
                if name == "scale":
                    p.fill_(0.3 + 0.1 * seed)
                elif name == "norm.weight":
                    p.copy_(1.0 + std * torch.randn(p.shape, generator=gen))
                elif name != "down.weight":
                    p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def adapted(
    backbone: nn.Module,
    config: af.AdapterConfig | None = None,
    num_classes: int | None = 3,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``backbone`` with (random, non-zero) adapters and a new head, in eval mode."""
    model = af.add_adapters(copy.deepcopy(backbone), config or af.AdapterConfig(), num_classes=num_classes)
    return randomize_adapters(model, seed).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference between two tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def reference_block(block: nn.Module, x: torch.Tensor, adapter: af.AdaptMLP, config: af.AdapterConfig) -> torch.Tensor:
    """DESIGN.md's formula, computed by hand from the frozen block's submodules and the adapter's weights.

    ``x' = x + ls1(attn(norm1 x))``; ``out = x' + ls2(mlp(norm2 x')) + s * (relu(h W_down^T + b) W_up^T + b)``,
    where ``h`` is ``norm2 x'`` (ln), ``x'`` (raw) or the branch's own LayerNorm of ``x'`` (own_ln); in
    sequential mode ``h`` is the MLP output, through the branch's own LayerNorm unless ``raw``.
    """
    blk = block.block if isinstance(block, af.AdaptedBlock) else block
    x1 = x + blk.ls1(blk.attn(blk.norm1(x)))
    normed = blk.norm2(x1)
    mlp = blk.ls2(blk.mlp(normed))

    def own_ln(t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, (t.shape[-1],), adapter.norm.weight, adapter.norm.bias, adapter.norm.eps)

    if config.mode == "sequential":
        h = mlp if config.adapter_input == "raw" else own_ln(mlp)
    elif config.adapter_input == "ln":
        h = normed
    elif config.adapter_input == "raw":
        h = x1
    else:
        h = own_ln(x1)
    down, up = adapter.down, adapter.up
    branch = F.relu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
    scale = adapter.scale if isinstance(adapter.scale, float) else adapter.scale.item()
    return x1 + mlp + scale * branch


# -- adapter files ---------------------------------------------------------------------------------------------


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and raw (string) metadata of a safetensors file."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
    return st_load(data), meta


def rewrite(
    src: Path,
    dst: Path,
    meta: Callable[[dict[str, str]], dict[str, str] | None] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Writes a copy of adapter file ``src`` to ``dst`` with its metadata and/or tensors edited."""
    t, m = read_file(src)
    if tensors is not None:
        t = tensors(t)
    new_meta = meta(dict(m)) if meta is not None else m
    Path(dst).write_bytes(st_save(t, metadata=new_meta))
    return Path(dst)
