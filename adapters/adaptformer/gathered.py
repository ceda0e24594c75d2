"""The branches and heads of many tasks stacked once, so a mixed batch costs the same kernels whatever its tasks.

S-LoRA and Punica serve many LoRA adapters in one batch by stacking their weights and indexing them per row; this
module does the same for AdaptMLP branches with plain torch ops. :class:`BranchBank` keeps, per block, the down and
up projections of every task it has served in slots of one tensor (built when a task is first seen, never per
batch), and :func:`gathered_block` runs a block whose branches are one batched product per projection.

Exact rewrites make every task fit one layout:

- d^ is padded with zeros to a common width (a zero column adds ``relu(0) * 0 = 0``);
- column 0 carries the up bias: its down weights are zero and its down bias one, so ``relu(1) = 1`` times a row
  of ``s * b_up`` adds the bias inside the up product;
- the scale ``s`` is folded into the up weights and bias, an own LayerNorm's affine into the down weights
  (``(LN0(h) * w + b) W = LN0(h) (w W) + b W``);
- a block where a task has no branch holds zeros: it adds exactly nothing.

What cannot be folded is which tensor feeds the branch (``x'``, ``LN2(x')`` or the MLP output, with or without an
own LayerNorm): rows are ordered by that *kind*, so each kind present is one contiguous run of rows. A block runs
at most one product pair per kind present (at most five), however many tasks the batch mixes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adaptformer.layer import run_block
from adaptformer.task import TaskAdapter

__all__ = [
    "BankWeights",
    "BranchBank",
    "KindGroup",
    "branch_kind",
    "gathered_block",
    "grouped_mm_works",
    "refuse_grouped",
    "to_device",
]

# (source of the branch input: "x" (x'), "normed" (LN2(x')) or "mlp" (the MLP output); own LayerNorm eps or None)
Kind = tuple[str, float | None]

_ROW_BYTES = 16  # d^ + 1 rounded up to 16-byte rows, as grouped GEMM kernels want


def branch_kind(task: TaskAdapter) -> Kind | None:
    """Which tensor feeds ``task``'s branches (``None``: a linear probe, no branch at all)."""
    for _, adapter in task.branches():
        if adapter.mode == "sequential":
            source = "mlp"
        else:
            source = "normed" if adapter.adapter_input == "ln" else "x"
        return source, (adapter.norm.eps if adapter.norm is not None else None)
    return None


@dataclass(frozen=True)
class KindGroup:
    """One contiguous run of rows whose branches read the same input.

    Attributes:
        kind: The input they read.
        rows: ``(start, stop)`` among the batch's (reordered) rows.
        tasks: ``(start, stop)`` among the batch's tasks with branches, in the same order.
        offsets: Cumulative row counts of those tasks, relative to ``rows[0]`` (for segmented products).
    """

    kind: Kind
    rows: tuple[int, int]
    tasks: tuple[int, int]
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class BankWeights:
    """One batch's private view of the bank (gathered under the bank's lock, so later slot writes cannot touch it).

    Attributes:
        down: ``[blocks, rows, dim, rank]`` per branch row (``baddbmm``) or ``[blocks, tasks, dim, rank]`` per
            task (``torch._grouped_mm``).
        down_bias: ``[blocks, rows, 1, rank]`` per branch row.
        up: ``[blocks, rows or tasks, rank, dim]``, scale and up bias folded in.
        head_weight: ``[tasks, classes, features]`` for every task of the batch, probes included.
        head_bias: ``[tasks, classes]``.
        blocks: Indices of the blocks where some task of the batch has a branch.
    """

    down: torch.Tensor
    down_bias: torch.Tensor
    up: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    blocks: frozenset[int]


class BranchBank:
    """Slots of stacked branch and head weights on the backbone's device, one slot per task served.

    A task is written into a slot the first time a batch needs it; later batches only gather. Slots are keyed by
    the TaskAdapter object (the engine and the server treat one as immutable: replacing a task makes a new one).
    The bank holds it weakly: a task that nobody else holds (removed, paged out by the server) frees its slot.
    Beyond ``max_slots`` the least recently used task that the current batch does not need gives its slot up. A
    wider d^ or class count than the bank holds reallocates it (zero padding), once.

    Args:
        depth: Blocks of the backbone.
        dim: Token width.
        features: Width of the pooled features the heads read.
        device: Where the stacked weights live.
        dtype: Their dtype (the backbone's).
        max_slots: Slots kept before least recently used tasks are dropped.
    """

    def __init__(
        self, depth: int, dim: int, features: int, device: torch.device, dtype: torch.dtype, max_slots: int = 128
    ) -> None:
        self.depth, self.dim, self.features = depth, dim, features
        self.device, self.dtype = device, dtype
        self.max_slots = max_slots
        self._lock = threading.Lock()
        self._slot: dict[int, int] = {}  # id(task) -> slot
        self._task: dict[int, weakref.ref[TaskAdapter]] = {}  # slot -> task (checks the id still means it)
        self._dead: list[weakref.ref[TaskAdapter]] = []  # tasks collected since the last batch
        self._layers: dict[int, frozenset[int]] = {}  # slot -> blocks with a branch
        self._used: dict[int, int] = {}  # slot -> batch counter when last used
        self._clock = 0
        self._capacity = self._rank = self._classes = 0
        self.down = self.down_bias = self.up = self.head_weight = self.head_bias = torch.empty(0)
        self._align = max(1, _ROW_BYTES // torch.empty(0, dtype=dtype).element_size())
        self._alloc(0, self._align, 1)

    @property
    def slots_used(self) -> int:
        return len(self._task)

    def _alloc(self, capacity: int, rank: int, classes: int) -> None:
        """(Re)allocates the stacked tensors, copying what the old ones held."""
        kw: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        L, d = self.depth, self.dim
        new = {
            "down": torch.zeros(L, capacity, d, rank, **kw),
            "down_bias": torch.zeros(L, capacity, 1, rank, **kw),
            "up": torch.zeros(L, capacity, rank, d, **kw),
            "head_weight": torch.zeros(capacity, classes, self.features, **kw),
            "head_bias": torch.zeros(capacity, classes, **kw),
        }
        if self._capacity:
            c, r, k = self._capacity, self._rank, self._classes
            new["down"][:, :c, :, :r] = self.down
            new["down_bias"][:, :c, :, :r] = self.down_bias
            new["up"][:, :c, :r] = self.up
            new["head_weight"][:c, :k] = self.head_weight
            new["head_bias"][:c, :k] = self.head_bias
        self.down, self.down_bias, self.up = new["down"], new["down_bias"], new["up"]
        self.head_weight, self.head_bias = new["head_weight"], new["head_bias"]
        self._capacity, self._rank, self._classes = capacity, rank, classes

    @torch.no_grad()
    def _write(self, slot: int, task: TaskAdapter) -> None:
        """Folds one task into ``slot`` (float32 arithmetic, one rounding to the bank's dtype)."""
        L, d = self.depth, self.dim
        down = torch.zeros(L, d, self._rank, device=self.device)
        down_bias = torch.zeros(L, 1, self._rank, device=self.device)
        up = torch.zeros(L, self._rank, d, device=self.device)
        for i, a in task.branches():
            w_down = a.down.weight.float().t()  # [dim, d^]
            b_down = a.down.bias.float()
            if a.norm is not None:
                b_down = b_down + a.norm.bias.float() @ w_down
                w_down = a.norm.weight.float().unsqueeze(1) * w_down
            scale = a.scale.detach().float() if isinstance(a.scale, torch.Tensor) else float(a.scale)
            r = w_down.shape[1]
            down[i, :, 1 : r + 1] = w_down
            down_bias[i, 0, 0] = 1.0  # the bias column: relu(0 * h + 1) = 1
            down_bias[i, 0, 1 : r + 1] = b_down
            up[i, 0] = scale * a.up.bias.float()
            up[i, 1 : r + 1] = scale * a.up.weight.float().t()
        self.down[:, slot] = down
        self.down_bias[:, slot] = down_bias
        self.up[:, slot] = up
        self.head_weight[slot].zero_()
        self.head_bias[slot].zero_()
        classes = task.head.out_features
        self.head_weight[slot, :classes] = task.head.weight
        self.head_bias[slot, :classes] = task.head.bias

    def _admit(self, tasks: Sequence[TaskAdapter]) -> list[int]:
        """Slots of ``tasks``, writing the missing ones (under the lock)."""
        self._clock += 1
        while self._dead:  # tasks nobody holds any more: their slots are free
            ref = self._dead.pop()
            slot = next((s for s, r in self._task.items() if r is ref), None)
            if slot is not None:
                self._drop(slot)
        wanted = {id(t) for t in tasks}
        missing = list({id(t): t for t in tasks if not self._holds(t)}.values())
        if missing:
            rank = max([self._rank - 1, *(a.down.out_features for t in missing for _, a in t.branches())])
            rank = -(-(rank + 1) // self._align) * self._align
            classes = max(self._classes, *(t.head.out_features for t in missing))
            free = [s for s in range(self._capacity) if s not in self._task]
            if len(free) < len(missing) and self._capacity >= self.max_slots:
                idle = sorted((self._used[s], s) for s, r in self._task.items() if id(r()) not in wanted)
                for _, s in idle[: len(missing) - len(free)]:
                    self._drop(s)
                    free.append(s)
            capacity = self._capacity
            if len(free) < len(missing):
                capacity = max(2 * self._capacity, self.slots_used + len(missing), 8)
            if (capacity, rank, classes) != (self._capacity, self._rank, self._classes):
                self._alloc(capacity, rank, classes)
                free = [s for s in range(self._capacity) if s not in self._task]
            for task, slot in zip(missing, free, strict=False):
                self._write(slot, task)
                self._slot[id(task)] = slot
                self._task[slot] = weakref.ref(task, self._dead.append)
                self._layers[slot] = frozenset(int(k) for k in task.adapters)
        slots = [self._slot[id(t)] for t in tasks]
        for s in slots:
            self._used[s] = self._clock
        return slots

    def _holds(self, task: TaskAdapter) -> bool:
        slot = self._slot.get(id(task))
        return slot is not None and slot in self._task and self._task[slot]() is task

    def _drop(self, slot: int) -> None:
        self._task.pop(slot)
        for key in [k for k, s in self._slot.items() if s == slot]:
            del self._slot[key]
        del self._layers[slot], self._used[slot]

    def gather(self, tasks: Sequence[TaskAdapter], rows_per_task: Sequence[int], layout: str = "rows") -> BankWeights:
        """The stacked weights one batch needs, copied out of the bank (one index transfer, a few gathers).

        Args:
            tasks: The batch's tasks in row order: those with branches first (one per entry of
                ``rows_per_task``), then the linear probes.
            rows_per_task: Rows of each task with branches, in the same order.
            layout: ``rows``: branch weights per row (for ``baddbmm``); ``grouped``: per task, the down bias per
                row (for ``torch._grouped_mm``).
        """
        if layout not in ("rows", "grouped"):
            raise ValueError(f"layout must be 'rows' or 'grouped', got {layout!r}")
        with self._lock:
            slots = self._admit(tasks)
            n = len(rows_per_task)
            row_slots = [s for s, count in zip(slots[:n], rows_per_task, strict=True) for _ in range(count)]
            index = to_device(slots + row_slots, self.device)
            task_index, row_index = index[: len(tasks)], index[len(tasks) :]
            branch_index = row_index if layout == "rows" else task_index[:n]
            down, up = self.down.index_select(1, branch_index), self.up.index_select(1, branch_index)
            if layout == "grouped" and grouped_layout(self.device, self.dtype) == "col":
                down, up = _column_major(down), _column_major(up)
            return BankWeights(
                down=down,
                down_bias=self.down_bias.index_select(1, row_index),
                up=up,
                head_weight=self.head_weight.index_select(0, task_index),
                head_bias=self.head_bias.index_select(0, task_index),
                blocks=frozenset().union(*(self._layers[s] for s in slots[:n])),
            )


def to_device(values: Sequence[int], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A host list as a device tensor without stalling the host: through pinned memory on CUDA."""
    t = torch.tensor(list(values), dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _source(kind: Kind, x: torch.Tensor, normed: torch.Tensor, mlp_out: torch.Tensor, rows: slice) -> torch.Tensor:
    source, eps = kind
    h = (x if source == "x" else normed if source == "normed" else mlp_out)[rows]
    return F.layer_norm(h, h.shape[-1:], eps=eps) if eps is not None else h


def gathered_block(
    block: nn.Module,
    x: torch.Tensor,
    i: int,
    weights: BankWeights,
    groups: Sequence[KindGroup],
    offsets: Sequence[torch.Tensor] | None = None,
    **block_args: object,
) -> torch.Tensor:
    """A timm block's forward (any family of :func:`adaptformer.layer.block_family`) with every task's branch of block
    ``i``: one product pair per kind of input.

    The block itself runs through :func:`adaptformer.layer.run_block`, the slice path's block; only how the
    branches are added differs.

    Args:
        block: A pre-norm timm block (ViT, Eva or Beit).
        x: Tokens ``[batch, tokens, dim]``, rows ordered so that each group is contiguous.
        i: The block's index (its slice of the bank).
        weights: The batch's gathered weights.
        groups: Runs of rows sharing a branch input.
        offsets: Per group, cumulative token counts of its tasks (int32, on the device): the segmented
            ``torch._grouped_mm`` path, weights per task. ``None``: per-row weights and ``baddbmm``.
        block_args: What the model gives the block (Eva's ``rope``, Beit's ``shared_rel_pos_bias``).
    """

    def add(out: torch.Tensor, x: torch.Tensor, normed: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        # Contiguous, so each run of rows the products write into is a plain strided view (an add keeps its
        # inputs' strides, and the tokens of a ViT without prefix tokens are a transposed view of the patch
        # embedding).
        out = out.contiguous()
        if i not in weights.blocks:
            return out
        for g, group in enumerate(groups):
            rows = slice(*group.rows)
            h = _source(group.kind, x, normed, mlp_out, rows)
            if offsets is None:
                z = torch.baddbmm(weights.down_bias[i, rows], h, weights.down[i, rows]).relu_()
                out[rows].baddbmm_(z, weights.up[i, rows])
            else:
                tasks = slice(*group.tasks)
                n, t, d = h.shape
                z = torch._grouped_mm(h.reshape(n * t, d), weights.down[i, tasks], offs=offsets[g])
                z = z.view(n, t, -1).add_(weights.down_bias[i, rows]).relu_()
                y = torch._grouped_mm(z.view(n * t, -1), weights.up[i, tasks], offs=offsets[g])
                out[rows].add_(y.view(n, t, d))
        return out

    return run_block(block, x, add, **block_args)


_GROUPED: dict[tuple[str, torch.dtype], str | None] = {}


def refuse_grouped(device: torch.device, dtype: torch.dtype) -> None:
    """Marks ``torch._grouped_mm`` unusable for this device and dtype (it failed on a real batch)."""
    _GROUPED[(str(device), dtype)] = None


def _column_major(b: torch.Tensor) -> torch.Tensor:
    return b.transpose(-2, -1).contiguous().transpose(-2, -1)


def grouped_layout(device: torch.device, dtype: torch.dtype) -> str | None:
    """How ``torch._grouped_mm`` takes its per-group weights here: ``row`` (as stored) or ``col`` (column-major,
    as some CUDA kernels want); ``None`` where it does not run or disagrees with a plain product (probed once)."""
    key = (str(device), dtype)
    if key not in _GROUPED:
        _GROUPED[key] = None
        if hasattr(torch, "_grouped_mm"):
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(40, 64, generator=gen).to(device, dtype)
            b = torch.randn(3, 64, 16, generator=gen).to(device, dtype)
            offs = torch.tensor([8, 8, 40], dtype=torch.int32, device=device)  # an empty group too
            want = torch.cat([a[:8].float() @ b[0].float(), a[8:].float() @ b[2].float()])
            for layout, weights in (("row", b), ("col", _column_major(b))):
                try:
                    got = torch._grouped_mm(a, weights, offs=offs).float()
                except (RuntimeError, NotImplementedError, TypeError):
                    continue
                if bool((got - want).abs().max() <= 0.05 * want.abs().max()):
                    _GROUPED[key] = layout
                    break
    return _GROUPED[key]


def grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs here for ``dtype`` and agrees with a plain product."""
    return grouped_layout(device, dtype) is not None
