"""AdaptMLP, the bottleneck branch, and the forward pass of a timm block (ViT, Eva, Beit) with branches beside its
MLP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from timm.models.vision_transformer import Block
from torch import nn

from adaptformer.config import AdapterConfig

__all__ = [
    "AdaptMLP",
    "AdaptedBlock",
    "AddBranches",
    "BlockFamily",
    "add_branches",
    "block_family",
    "block_forward",
    "run_block",
]


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


@dataclass(frozen=True)
class BlockFamily:
    """How one family of timm blocks is built: the names of its parts and the arguments its attention takes.

    Every supported family has the same pre-norm order (:func:`run_block`); they differ in how the layer scale of
    each half is held (a module such as ``ls1``, or a ``gamma_1`` tensor that is ``None`` without layer scale) and
    in what the model hands each block besides the tokens (rotary embeddings, a relative position bias), which the
    block passes on to its attention unchanged.

    Attributes:
        name: Short name of the family (``vit``, ``eva``, ``beit``).
        scales: The layer-scale parts of the attention and MLP halves.
        block_args: Keyword arguments the model's forward gives each block (passed to the attention).
    """

    name: str
    scales: tuple[str, str]
    block_args: tuple[str, ...]


_PARTS = ("norm1", "attn", "drop_path1", "norm2", "mlp", "drop_path2")


def _families() -> dict[type[nn.Module], BlockFamily]:
    from timm.models.beit import Block as BeitBlock
    from timm.models.eva import EvaBlock

    return {
        Block: BlockFamily("vit", ("ls1", "ls2"), ("attn_mask", "is_causal")),
        EvaBlock: BlockFamily("eva", ("gamma_1", "gamma_2"), ("rope", "attn_mask", "is_causal")),
        BeitBlock: BlockFamily("beit", ("gamma_1", "gamma_2"), ("shared_rel_pos_bias",)),
    }


_FAMILIES: dict[type[nn.Module], BlockFamily] = {}


def block_family(block: nn.Module) -> BlockFamily | None:
    """The family of a timm block (its class, or a subclass that keeps the family's forward), ``None`` when it is
    none of the pre-norm families AdaptFormer supports or lacks one of their parts."""
    if not _FAMILIES:
        _FAMILIES.update(_families())
    kind = type(block)
    family = next((f for c, f in _FAMILIES.items() if issubclass(kind, c) and kind.forward is c.forward), None)
    if family is None or not all(hasattr(block, p) for p in (*_PARTS, *family.scales)):
        return None
    return family


def _scaled(block: nn.Module, part: str, t: torch.Tensor) -> torch.Tensor:
    scale = getattr(block, part)
    if scale is None:  # a gamma the block was built without
        return t
    if isinstance(scale, torch.Tensor):
        return scale * t
    return cast(nn.Module, scale)(t)


def run_block(block: nn.Module, x: torch.Tensor, add: AddBranches, **block_args: object) -> torch.Tensor:
    """A pre-norm timm block run once, its branches added by ``add`` from the three tensors they can read.

    ``x' = x + drop_path1(scale1(attn(norm1(x), **block_args)))``; ``m = drop_path2(scale2(mlp(norm2(x'))))``;
    ``out = add(x' + m, x', norm2(x'), m)``. ``scale1``/``scale2`` are the family's layer scale
    (:class:`BlockFamily`: ``ls1``/``ls2`` modules of a ViT ``Block``, ``gamma_1``/``gamma_2`` of Eva and Beit blocks,
    nothing when the block has none). This is the one place the order is written: the slice path and the gathered
    paths differ only in ``add``, and every family runs through it.

    Args:
        block: A timm ``Block``, ``EvaBlock`` or Beit ``Block`` (:func:`block_family`).
        x: Tokens, ``[batch, tokens, dim]``.
        add: Adds the branches (``(out, x, normed, mlp_out) -> out``).
        block_args: What the model gives its blocks, passed to the attention (``attn_mask``, ``is_causal``; Eva's
            ``rope``; Beit's ``shared_rel_pos_bias``).

    Raises:
        TypeError: ``block`` is not of a supported family.
    """
    family = block_family(block)
    if family is None:
        raise TypeError(f"{type(block).__name__} is not a pre-norm timm block of a supported family")
    first, second = family.scales
    b = cast(Block, block)  # the parts every family has, typed
    x = x + b.drop_path1(_scaled(block, first, b.attn(b.norm1(x), **block_args)))
    normed = b.norm2(x)
    mlp_out = b.drop_path2(_scaled(block, second, b.mlp(normed)))
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


def block_forward(block: nn.Module, x: torch.Tensor, branches: Sequence[Branch], **block_args: object) -> torch.Tensor:
    """A timm ``Block`` forward with AdaptMLP branches added, each on its rows (:func:`run_block` with
    :func:`add_branches`).

    ``x' = x + Attn(LN1(x))``; ``out = x' + MLP(LN2(x')) + s * branch(input)``: a batch mixing tasks runs the
    frozen attention and MLP once and each task's branch on its own rows.

    Args:
        block: A pre-norm timm block of a supported family (:func:`block_family`).
        x: Tokens, ``[batch, tokens, dim]``.
        branches: The adapters to apply and the rows they apply to (``(rows, adapter)``, see :func:`add_branches`).
        block_args: What the model gives its blocks (see :func:`run_block`).
    """
    return run_block(block, x, add_branches(branches), **block_args)


class AdaptedBlock(nn.Module):
    """A frozen timm block wrapped with one AdaptMLP (the single-task, trainable form).

    Its forward takes what the model's own forward gives the block it replaces (a ViT's ``attn_mask``/``is_causal``,
    Eva's ``rope``, Beit's ``shared_rel_pos_bias``), so the model runs unchanged around it.
    """

    def __init__(self, block: nn.Module, adapter: AdaptMLP) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, x: torch.Tensor, **block_args: object) -> torch.Tensor:
        return block_forward(self.block, x, [(None, self.adapter)], **block_args)
