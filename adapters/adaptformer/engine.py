"""MultiTaskViT: one frozen backbone, many tasks, any mix of tasks in one batch."""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adaptformer.adapter_file import load_adapter
from adaptformer.fingerprint import backbone_fingerprint
from adaptformer.fit import BackboneSpec
from adaptformer.gathered import (
    BankWeights,
    BranchBank,
    KindGroup,
    branch_kind,
    gathered_block,
    grouped_mm_works,
    refuse_grouped,
    to_device,
)
from adaptformer.layer import AdaptedBlock, block_forward
from adaptformer.model import BlockArgs, block_inputs, check_supported
from adaptformer.task import TaskAdapter
from adaptformer.video import TemporalRows, VideoViT, clip_support

__all__ = ["PATHS", "MultiTaskViT", "TaskTable"]

log = logging.getLogger("adaptformer.engine")

# How a mixed batch runs its branches (docs/ARCHITECTURE.md, "Engine paths"): ``slices``, each task's AdaptMLP
# on its run of rows; ``gathered``, one ``baddbmm`` per projection and kind of branch input with per-row weights
# from the bank; ``grouped``, the same with ``torch._grouped_mm`` over each task's segment of rows (the operator
# count of these two does not grow with the tasks of a batch); ``auto``, the engine's choice per batch and device.
PATHS = ("auto", "slices", "gathered", "grouped")


class TaskTable(Mapping[str, TaskAdapter]):
    """Task name -> TaskAdapter, immutable: the table one batch runs on from its start to its end.

    The engine has one task-table mechanism: its forward reads the tasks of a batch from a mapping of tasks made
    ready by :meth:`MultiTaskViT.prepare` (checked against the backbone, on its device and dtype). A server passes
    its own mapping per batch (``table=``: the exact adapter versions its requests were admitted with); without one
    the engine reads :attr:`MultiTaskViT.tasks`, a TaskTable that ``add_task`` and ``remove_task`` replace by a new
    one (copy on write), so a batch already running keeps the table it started with.

    Args:
        tasks: The table's entries (copied).
    """

    __slots__ = ("_tasks",)

    def __init__(self, tasks: Mapping[str, TaskAdapter] | None = None) -> None:
        self._tasks: dict[str, TaskAdapter] = dict(tasks or {})

    def __getitem__(self, name: str) -> TaskAdapter:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"TaskTable({sorted(self._tasks)})"

    def with_task(self, name: str, task: TaskAdapter) -> TaskTable:
        """A new table with ``name`` added or replaced."""
        return TaskTable({**self._tasks, name: task})

    def without(self, name: str) -> TaskTable:
        """A new table without ``name`` (KeyError when it has no such task)."""
        if name not in self._tasks:
            raise KeyError(f"unknown task {name!r}")
        return TaskTable({k: v for k, v in self._tasks.items() if k != name})


class MultiTaskViT(nn.Module):
    """Serves many tasks on one frozen timm ViT.

    The frozen parts (patch embedding, attention, MLPs, norms, pooling) run once on the whole batch; each
    sample's AdaptMLP branches and head are those of its own task. Tasks may differ in bottleneck, layers,
    scale, branch input, mode, class count and modality.

    A batch reads its tasks from one :class:`TaskTable` (or any mapping of prepared tasks, ``table=``): by default
    :attr:`tasks`, which ``add_task`` and ``remove_task`` replace by a new table under a lock, so one thread may add
    or remove tasks while another runs a batch: a batch runs entirely on the table it started with.

    Half precision: ``engine.to(dtype=torch.bfloat16)`` (or float16) runs backbone, branches and heads in that
    dtype; torch's LayerNorm and attention softmax kernels accumulate in float32 for half inputs.

    Args:
        backbone: A timm ViT without adapters (``VisionTransformer``, ``Eva`` or ``Beit``); it is frozen and put in
            eval mode. Clips need a ``VisionTransformer`` (an Eva's or Beit's blocks take 2D position inputs).
        fingerprint: Precomputed fingerprint of the backbone (computed when omitted).
        path: How mixed batches run their branches, one of ``PATHS`` (``auto``: the engine chooses per batch).

    Raises:
        ValueError: ``path`` is not one of ``PATHS``.
    """

    def __init__(self, backbone: nn.Module, fingerprint: str | None = None, path: str = "auto") -> None:
        super().__init__()
        self.path = path
        self._branch_bank: BranchBank | None = None
        vit = check_supported(backbone)
        if any(isinstance(b, AdaptedBlock) for b in vit.blocks):
            raise ValueError("MultiTaskViT takes the plain backbone; this one already has adapters")
        vit.reset_classifier(0)
        vit.requires_grad_(False)
        self.vit = vit.eval()
        self.fingerprint = fingerprint or backbone_fingerprint(vit)
        self.spec = BackboneSpec.of(vit, self.fingerprint)  # what a task must match (prepare checks it)
        self._clip_refusal = clip_support(vit)  # why clip batches are refused (None: they run); once, not per batch
        self._table = TaskTable()
        self._lock = threading.Lock()
        self._video: dict[tuple[int, int], VideoViT] = {}

    @property
    def path(self) -> str:
        """The branch path of mixed batches (one of ``PATHS``); setting another name is a ValueError."""
        return self._path

    @path.setter
    def path(self, path: str) -> None:
        if path not in PATHS:
            raise ValueError(f"unknown engine path {path!r}; valid paths: {', '.join(PATHS)}")
        self._path = path

    # -- task table -------------------------------------------------------------------------------------
    @property
    def tasks(self) -> TaskTable:
        """The engine's own task table (immutable; ``add_task``/``remove_task`` replace it)."""
        return self._table

    def add_task(self, name: str, adapter: TaskAdapter | str | os.PathLike) -> TaskAdapter:
        """Adds (or replaces) a task from a TaskAdapter or an adapter file; checks it fits the backbone."""
        # A TaskAdapter given by the caller may share tensors with a model still training: serve a copy.
        task = self.prepare(copy.deepcopy(adapter) if isinstance(adapter, TaskAdapter) else load_adapter(adapter))
        with self._lock:
            self._table = self._table.with_task(name, task)
        return task

    def prepare(self, task: TaskAdapter, spec: BackboneSpec | None = None) -> TaskAdapter:
        """Checks that ``task`` fits the backbone and moves it to the backbone's device and dtype, frozen.

        Args:
            task: The loaded task.
            spec: The rules to check (default :attr:`spec`; a server passes its own, with its frame limit).
        """
        (spec or self.spec).check_task(task)
        ref = next(self.vit.parameters())
        task = task.to(device=ref.device, dtype=ref.dtype).eval()
        task.requires_grad_(False)
        return task

    def remove_task(self, name: str) -> TaskAdapter:
        """Removes a task; batches already running finish with it."""
        with self._lock:
            table = self._table
            self._table = table.without(name)
        return table[name]

    def __contains__(self, name: object) -> bool:
        return name in self._table

    # -- forward ------------------------------------------------------------------------------------------
    def video(self, frames: int, tubelet: int) -> VideoViT:
        """The space-time view of the backbone for clips of ``frames`` frames (built once, weights shared)."""
        key = (frames, tubelet)
        if key not in self._video:
            self._video[key] = VideoViT(self.vit, frames=frames, tubelet=tubelet)
        return self._video[key]

    def embed(self, x: torch.Tensor, tubelet: int = 2, temporal: TemporalRows | None = None) -> torch.Tensor:
        """Images ``[batch, 3, H, W]`` or clips ``[batch, frames, 3, H, W]`` to tokens before the blocks.

        ``temporal`` (clips): ``(rows, task temporal part)`` pairs, so each task's rows get its own temporal part
        (``None``: the format-1 embedding, also the default for the whole batch).
        """
        return self.block_inputs(x, tubelet, temporal)[0]

    def block_inputs(
        self, x: torch.Tensor, tubelet: int = 2, temporal: TemporalRows | None = None
    ) -> tuple[torch.Tensor, list[BlockArgs]]:
        """The tokens before the blocks (:meth:`embed`) and what the backbone gives each block besides them (Eva's
        rotary embedding, Beit's relative position bias; nothing for a ViT), built once per forward."""
        if x.ndim == 5:
            if self._clip_refusal is not None:
                raise ValueError(self._clip_refusal)
            return self.video(x.shape[1], tubelet).embed(x, temporal or [(None, None)]), [{}] * len(self.vit.blocks)
        if x.ndim != 4:
            raise ValueError(f"expected images [batch, 3, H, W] or clips [batch, frames, 3, H, W], got {list(x.shape)}")
        return block_inputs(self.vit, x)

    def forward_features(
        self, x: torch.Tensor, tasks: Sequence[str], table: Mapping[str, TaskAdapter] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled features ``[batch, features]`` after the per-sample branches, and the rows of each task."""
        table = self._table if table is None else table
        features, plan, _ = self._features(x, tasks, table)
        if plan.order is not None:
            features = torch.empty_like(features).index_copy_(0, to_device(plan.order, features.device), features)
        return features, {t: torch.tensor(r, dtype=torch.long, device=x.device) for t, r in plan.rows.items()}

    def choose_path(self, plan: _Plan, device: torch.device, dtype: torch.dtype) -> str:
        """The branch path for one batch: ``self.path`` unless ``auto`` (docs/ARCHITECTURE.md, "Engine paths")."""
        path = self.path
        if path == "auto":
            # A CPU pays no launch cost: the three paths measure alike there (2 to 32 tasks on ViT-S/16), and the
            # slice path needs no bank. On CUDA the kernel count decides once two tasks have branches.
            if device.type != "cuda" or plan.branch_tasks <= 1:
                return "slices"
            path = "grouped" if _native_grouped_mm(device, dtype) else "gathered"
        if path == "grouped" and not grouped_mm_works(device, dtype):
            return "gathered"
        return path

    def _bank(self) -> BranchBank:
        ref = next(self.vit.parameters())
        bank = self._branch_bank
        if bank is None or bank.device != ref.device or bank.dtype != ref.dtype:
            bank = BranchBank(len(self.vit.blocks), self.vit.embed_dim, self.vit.num_features, ref.device, ref.dtype)
            self._branch_bank = bank
        return bank

    def _features(
        self, x: torch.Tensor, tasks: Sequence[str], table: Mapping[str, TaskAdapter]
    ) -> tuple[torch.Tensor, _Plan, BankWeights | None]:
        """Features in the plan's row order, the plan, and the gathered weights (``None`` on the slice path)."""
        if len(tasks) != x.shape[0]:
            raise ValueError(f"{len(tasks)} task names for a batch of {x.shape[0]}")
        unknown = sorted({t for t in tasks if t not in table})
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; known: {sorted(table)}")
        plan = _plan(tasks, table)
        tubelets = {table[t].info.input.tubelet for t in plan.rows} if x.ndim == 5 else {2}
        if len(tubelets) != 1:
            raise ValueError("clip tasks with different tubelet sizes cannot share a batch")
        ref = next(self.vit.parameters())
        if x.is_floating_point() and x.dtype != ref.dtype:
            x = x.to(ref.dtype)
        path = self.choose_path(plan, x.device, x.dtype)
        # Rows reordered once so that each task's rows, and each kind of branch input, are contiguous: a block then
        # works on slices (views) instead of gathering and scattering rows.
        if plan.order is not None:
            x = x.index_select(0, to_device(plan.order, x.device))
        spans = plan.spans
        tokens, args = self.block_inputs(
            x, tubelet=tubelets.pop(), temporal=[(span, table[t].temporal) for t, span in spans.items()]
        )
        weights = None
        if path == "slices":
            for i, block in enumerate(self.vit.blocks):
                key = str(i)
                branches = [(span, table[t].branch(key)) for t, span in spans.items() if key in table[t].adapters]
                tokens = block_forward(block, tokens, branches, **args[i])
        else:
            embedded = tokens
            try:
                weights, tokens = self._gathered_blocks(embedded, args, plan, table, path)
            except RuntimeError:
                if path != "grouped":
                    raise
                # A grouped-GEMM kernel that passed the probe may still refuse a shape: never again on this pair.
                refuse_grouped(x.device, x.dtype)
                log.warning("torch._grouped_mm failed on %s/%s; using per-row batched products", x.device, x.dtype)
                weights, tokens = self._gathered_blocks(embedded, args, plan, table, "gathered")
        tokens = self.vit.norm(tokens)
        return self.vit.forward_head(tokens, pre_logits=True), plan, weights

    def _gathered_blocks(
        self, tokens: torch.Tensor, args: list[BlockArgs], plan: _Plan, table: Mapping[str, TaskAdapter], path: str
    ) -> tuple[BankWeights, torch.Tensor]:
        layout = "grouped" if path == "grouped" else "rows"
        weights = self._bank().gather([table[t] for t in plan.tasks], plan.counts, layout=layout)
        offsets = None
        if path == "grouped":
            n = tokens.shape[1]
            flat = [n * c for g in plan.groups for c in g.offsets]
            offs = to_device(flat, tokens.device, torch.int32)
            offsets, start = [], 0
            for g in plan.groups:
                offsets.append(offs[start : start + len(g.offsets)])
                start += len(g.offsets)
        for i, block in enumerate(self.vit.blocks):
            tokens = gathered_block(block, tokens, i, weights, plan.groups, offsets, **args[i])
        return weights, tokens

    @torch.inference_mode()
    def forward(
        self, x: torch.Tensor, tasks: Sequence[str] | str, table: Mapping[str, TaskAdapter] | None = None
    ) -> list[torch.Tensor]:
        """Logits per sample.

        Args:
            x: Images ``[batch, 3, H, W]`` or clips ``[batch, frames, 3, H, W]`` (cast to the backbone's dtype).
            tasks: One task name per sample, or one name for the whole batch.
            table: Task table to use instead of the engine's own (a server passes the exact adapter versions
                each request started with); its TaskAdapters must be on the backbone's device and dtype.

        Returns:
            A list of ``batch`` tensors (views of the batch's logits, in the backbone's dtype); entry ``i`` has
            the class count of ``tasks[i]``.
        """
        if isinstance(tasks, str):
            tasks = [tasks] * x.shape[0]
        table = self._table if table is None else table
        features, plan, weights = self._features(x, tasks, table)
        out: list[torch.Tensor | None] = [None] * x.shape[0]
        position = plan.order or range(x.shape[0])
        if weights is None:
            for t, span in plan.spans.items():
                logits = table[t].head(features if span is None else features[span])
                for j, r in enumerate(plan.rows[t]):
                    out[r] = logits[j]
            return out  # type: ignore[return-value]
        # Every head of the batch in one product (features x all its tasks' classes), then each row's own block:
        # a few kernels whatever the number of tasks; the extra multiply-adds are batch x tasks x classes x width.
        tasks_n, classes, width = weights.head_weight.shape
        logits = torch.addmm(weights.head_bias.reshape(-1), features, weights.head_weight.reshape(-1, width).t())
        which = to_device([k for k, c in enumerate(plan.counts_all) for _ in range(c)], features.device)
        logits = logits.view(-1, tasks_n, classes).gather(1, which.view(-1, 1, 1).expand(-1, 1, classes))[:, 0]
        p = 0
        for t, count in zip(plan.tasks, plan.counts_all, strict=True):
            n = table[t].num_classes
            for _ in range(count):
                out[position[p]] = logits[p, :n]
                p += 1
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class _Plan:
    """How one batch runs, worked out once on the host (no device synchronisation inside the forward pass).

    Attributes:
        tasks: The batch's tasks in row order: those with branches (ordered by the kind of their branch input),
            then linear probes.
        rows: Original rows of each task.
        counts: Rows of each task with branches (the first ``branch_tasks`` of ``tasks``).
        counts_all: Rows of every task of ``tasks``.
        order: Original row of each reordered row (``None``: the batch is already in order).
        spans: Each task's run of reordered rows (``None`` for all rows when the batch has one task).
        groups: Runs of rows whose branches read the same input.
    """

    tasks: list[str]
    rows: dict[str, list[int]]
    counts: list[int]
    counts_all: list[int]
    order: list[int] | None
    spans: dict[str, slice | None]
    groups: list[KindGroup]

    @property
    def branch_tasks(self) -> int:
        return len(self.counts)


def _native_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` has a native kernel here (bfloat16 on compute capability 9.0 and up); elsewhere
    it falls back to one product per group, which reads the offsets on the host."""
    return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] >= 9


def _plan(tasks: Sequence[str], table: Mapping[str, TaskAdapter]) -> _Plan:
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        rows.setdefault(t, []).append(i)
    kinds = {t: branch_kind(table[t]) for t in rows}
    branched_kinds = {t: k for t, k in kinds.items() if k is not None}
    kind_order = {k: n for n, k in enumerate(dict.fromkeys(branched_kinds.values()))}
    branched = sorted(branched_kinds, key=lambda t: kind_order[branched_kinds[t]])
    ordered = branched + [t for t in rows if kinds[t] is None]
    order = [r for t in ordered for r in rows[t]]
    spans: dict[str, slice | None] = {}
    start = 0
    for t in ordered:
        spans[t] = slice(start, start + len(rows[t])) if len(rows) > 1 else None
        start += len(rows[t])
    groups: list[KindGroup] = []
    row = task = 0
    for kind in kind_order:
        members = [t for t in branched if kinds[t] == kind]
        counts = [len(rows[t]) for t in members]
        offsets = [sum(counts[: k + 1]) for k in range(len(counts))]
        groups.append(KindGroup(kind, (row, row + offsets[-1]), (task, task + len(members)), tuple(offsets)))
        row += offsets[-1]
        task += len(members)
    return _Plan(
        tasks=ordered,
        rows=rows,
        counts=[len(rows[t]) for t in branched],
        counts_all=[len(rows[t]) for t in ordered],
        order=None if order == list(range(len(tasks))) else order,
        spans=spans,
        groups=groups,
    )
