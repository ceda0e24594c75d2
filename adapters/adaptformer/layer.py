"""AdaptMLP, the bottleneck branch, and the forward pass of a timm block with branches beside its MLP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from adaptformer.config import AdapterConfig

__all__ = ["AdaptMLP", "AdaptedBlock", "AddBranches", "add_branches", "block_forward", "run_block"]


class AdaptMLP(nn.Module):
    """``s * up(dropout(ReLU(down(input))))``, the AdaptFormer branch of one block.

    Args:
        dim: Token width of the block.
        config: Bottleneck, scale, mode, input and dropout.
    """

    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        self.mode = config.mode
        self.adapter_input = config.adapter_input
        self.norm = nn.LayerNorm(dim) if config.needs_own_norm else None
        self.down = nn.Linear(dim, config.bottleneck)
        self.up = nn.Linear(config.bottleneck, dim)
        self.dropout = nn.Dropout(config.dropout)
        if config.learnable_scale:
            self.scale: nn.Parameter | float = nn.Parameter(torch.tensor(float(config.scale)))
        else:
            self.scale = float(config.scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W_down Kaiming normal; W_up and both biases zero: a fresh branch adds exactly nothing."""
        nn.init.kaiming_normal_(self.down.weight, a=0.0, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def source(self, x: torch.Tensor, normed: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """Picks the branch input among x', LN2(x') and the MLP output (before the branch's own norm)."""
        if self.mode == "sequential":
            return mlp_out
        return normed if self.adapter_input == "ln" else x

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            h = self.norm(h)
        return self.up(self.dropout(torch.relu(self.down(h)))) * self.scale

    def extra_repr(self) -> str:
        s = "learnable" if isinstance(self.scale, nn.Parameter) else f"{self.scale:g}"
        return f"mode={self.mode}, input={self.adapter_input}, scale={s}"


Rows = torch.Tensor | slice | None
Branch = tuple[Rows, AdaptMLP]
AddBranches = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``add(out, x', LN2(x'), MLP output) -> out`` with the branches added: what a block's branches do, given their
inputs (``out = x' + MLP output``, a fresh tensor the branches may write in place)."""


def run_block(block: nn.Module, x: torch.Tensor, add: AddBranches, **attn_kwargs: object) -> torch.Tensor:
    """A pre-norm timm ``Block`` run once, its branches added by ``add`` from the three tensors they can read.

    ``x' = x + Attn(LN1(x))``; ``out = add(x' + MLP(LN2(x')), x', LN2(x'), MLP(LN2(x')))``. The block's own
    submodules (``norm1``, ``attn``, ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``, ``drop_path2``) are called
    in that order; this is the one place the order is written (the slice path and the gathered paths differ only in
    ``add``).

    Args:
        block: A timm ``Block`` (pre-norm, optional layer scale and drop path).
        x: Tokens, ``[batch, tokens, dim]``.
        add: Adds the branches (``(out, x, normed, mlp_out) -> out``).
        attn_kwargs: Passed to the attention (``attn_mask``, ``is_causal``).
    """
    block = cast(Block, block)  # its submodules, typed
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), **attn_kwargs)))
    normed = block.norm2(x)
    mlp_out = block.drop_path2(block.ls2(block.mlp(normed)))
    return add(x + mlp_out, x, normed, mlp_out)


def add_branches(branches: Sequence[Branch]) -> AddBranches:
    """``add`` for :func:`run_block`: each ``(rows, adapter)`` adds its AdaptMLP output on its rows.

    ``rows`` selects the samples of the batch a branch applies to (``None``: all; a ``slice``: a contiguous run of
    rows, the cheap case; a tensor of indices: any rows).
    """

    def add(out: torch.Tensor, x: torch.Tensor, normed: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        # In place: ``out`` is a fresh tensor that no backward pass needs; copying the whole batch once per task
        # and block would cost more memory traffic than the branches themselves on a CPU.
        for rows, adapter in branches:
            h = adapter.source(x, normed, mlp_out)
            if rows is None:
                out.add_(adapter(h))
            elif isinstance(rows, slice):
                out[rows].add_(adapter(h[rows]))
            else:
                out.index_add_(0, rows, adapter(h.index_select(0, rows)))
        return out

    return add


def block_forward(block: nn.Module, x: torch.Tensor, branches: Sequence[Branch], **attn_kwargs: object) -> torch.Tensor:
    """A timm ``Block`` forward with AdaptMLP branches added, each on its rows (:func:`run_block` with
    :func:`add_branches`).

    ``x' = x + Attn(LN1(x))``; ``out = x' + MLP(LN2(x')) + s * branch(input)``: a batch mixing tasks runs the
    frozen attention and MLP once and each task's branch on its own rows.

    Args:
        block: A timm ``Block`` (pre-norm, optional layer scale and drop path).
        x: Tokens, ``[batch, tokens, dim]``.
        branches: The adapters to apply and the rows they apply to (``(rows, adapter)``, see :func:`add_branches`).
    """
    return run_block(block, x, add_branches(branches), **attn_kwargs)


class AdaptedBlock(nn.Module):
    """A frozen timm block wrapped with one AdaptMLP (the single-task, trainable form)."""

    def __init__(self, block: nn.Module, adapter: AdaptMLP) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        kwargs = {"attn_mask": attn_mask, "is_causal": is_causal} if attn_mask is not None or is_causal else {}
        return block_forward(self.block, x, [(None, self.adapter)], **kwargs)
