"""MultiTaskViT: one frozen backbone, many tasks, any mix of tasks in one batch."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from adaptformer.adapter_file import check_compatible, load_adapter
from adaptformer.fingerprint import backbone_fingerprint
from adaptformer.layer import AdaptedBlock, block_forward
from adaptformer.model import check_supported, image_tokens
from adaptformer.task import TaskAdapter
from adaptformer.video import VideoViT

__all__ = ["MultiTaskViT"]


class MultiTaskViT(nn.Module):
    """Serves many tasks on one frozen timm ViT.

    The frozen parts (patch embedding, attention, MLPs, norms, pooling) run once on the whole batch; each
    sample's AdaptMLP branches and head are those of its own task. Tasks may differ in bottleneck, layers,
    scale, branch input, mode, class count and modality.

    Adding or removing a task swaps an immutable snapshot of the task table under a lock, so one thread may
    add or remove tasks while another runs a batch: a batch runs entirely on the table it started with.

    Args:
        backbone: A timm VisionTransformer without adapters; it is frozen and put in eval mode.
        fingerprint: Precomputed fingerprint of the backbone (computed when omitted).
    """

    def __init__(self, backbone: nn.Module, fingerprint: str | None = None) -> None:
        super().__init__()
        vit = check_supported(backbone)
        if any(isinstance(b, AdaptedBlock) for b in vit.blocks):
            raise ValueError("MultiTaskViT takes the plain backbone; this one already has adapters")
        vit.reset_classifier(0)
        vit.requires_grad_(False)
        self.vit = vit.eval()
        self.fingerprint = fingerprint or backbone_fingerprint(vit)
        self._tasks: Mapping[str, TaskAdapter] = {}
        self._lock = threading.Lock()
        self._video: dict[tuple[int, int], VideoViT] = {}

    # -- task table -------------------------------------------------------------------------------------
    @property
    def tasks(self) -> Mapping[str, TaskAdapter]:
        """The current task table (an immutable snapshot)."""
        return self._tasks

    def add_task(self, name: str, adapter: TaskAdapter | str | os.PathLike) -> TaskAdapter:
        """Adds (or replaces) a task from a TaskAdapter or an adapter file; checks it fits the backbone."""
        # A TaskAdapter given by the caller may share tensors with a model still training: serve a copy.
        task = self.prepare(copy.deepcopy(adapter) if isinstance(adapter, TaskAdapter) else load_adapter(adapter))
        with self._lock:
            table = dict(self._tasks)
            table[name] = task
            self._tasks = table
        return task

    def prepare(self, task: TaskAdapter) -> TaskAdapter:
        """Checks that ``task`` fits the backbone and moves it to the backbone's device and dtype, frozen."""
        check_compatible(task, self.vit, self.fingerprint)
        ref = next(self.vit.parameters())
        task = task.to(device=ref.device, dtype=ref.dtype).eval()
        task.requires_grad_(False)
        return task

    def remove_task(self, name: str) -> TaskAdapter:
        """Removes a task; batches already running finish with it."""
        with self._lock:
            if name not in self._tasks:
                raise KeyError(f"unknown task {name!r}")
            table = dict(self._tasks)
            task = table.pop(name)
            self._tasks = table
        return task

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    # -- forward ------------------------------------------------------------------------------------------
    def video(self, frames: int, tubelet: int) -> VideoViT:
        """The space-time view of the backbone for clips of ``frames`` frames (built once, weights shared)."""
        key = (frames, tubelet)
        if key not in self._video:
            self._video[key] = VideoViT(self.vit, frames=frames, tubelet=tubelet)
        return self._video[key]

    def embed(self, x: torch.Tensor, tubelet: int = 2) -> torch.Tensor:
        """Images ``[batch, 3, H, W]`` or clips ``[batch, frames, 3, H, W]`` to tokens before the blocks."""
        if x.ndim == 5:
            return self.video(x.shape[1], tubelet).embed(x)
        if x.ndim != 4:
            raise ValueError(f"expected images [batch, 3, H, W] or clips [batch, frames, 3, H, W], got {list(x.shape)}")
        return image_tokens(self.vit, x)

    def forward_features(
        self, x: torch.Tensor, tasks: Sequence[str], table: Mapping[str, TaskAdapter] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled features ``[batch, features]`` after the per-sample branches, and the rows of each task."""
        table = self._tasks if table is None else table
        if len(tasks) != x.shape[0]:
            raise ValueError(f"{len(tasks)} task names for a batch of {x.shape[0]}")
        unknown = sorted({t for t in tasks if t not in table})
        if unknown:
            raise KeyError(f"unknown task(s) {unknown}; known: {sorted(table)}")
        groups = _group_rows(tasks, x.device)
        tubelets = {table[t].info.input.tubelet for t in groups} if x.ndim == 5 else {2}
        if len(tubelets) != 1:
            raise ValueError("clip tasks with different tubelet sizes cannot share a batch")
        # Rows reordered once so that each task's rows are contiguous: every block then adds each branch on a
        # slice (a view) instead of gathering and scattering the task's rows.
        spans: dict[str, slice | None] = {}
        order = None
        if len(groups) == 1:
            spans = dict.fromkeys(groups)
        else:
            start = 0
            for t, rows in groups.items():
                spans[t] = slice(start, start + len(rows))
                start += len(rows)
            order = torch.cat(list(groups.values()))
            x = x.index_select(0, order)
        tokens = self.embed(x, tubelet=tubelets.pop())
        for i, block in enumerate(self.vit.blocks):
            key = str(i)
            branches = [(span, table[t].adapters[key]) for t, span in spans.items() if key in table[t].adapters]
            tokens = block_forward(block, tokens, branches)
        tokens = self.vit.norm(tokens)
        features = self.vit.forward_head(tokens, pre_logits=True)
        if order is not None:
            features = torch.empty_like(features).index_copy_(0, order, features)
        return features, groups

    @torch.inference_mode()
    def forward(
        self, x: torch.Tensor, tasks: Sequence[str] | str, table: Mapping[str, TaskAdapter] | None = None
    ) -> list[torch.Tensor]:
        """Logits per sample.

        Args:
            x: Images ``[batch, 3, H, W]`` or clips ``[batch, frames, 3, H, W]``.
            tasks: One task name per sample, or one name for the whole batch.
            table: Task table to use instead of the engine's own (a server passes the exact adapter versions
                each request started with); its TaskAdapters must be on the backbone's device and dtype.

        Returns:
            A list of ``batch`` tensors; entry ``i`` has the class count of ``tasks[i]``.
        """
        if isinstance(tasks, str):
            tasks = [tasks] * x.shape[0]
        table = self._tasks if table is None else table
        features, groups = self.forward_features(x, tasks, table)
        out: list[torch.Tensor | None] = [None] * x.shape[0]
        for t, rows in groups.items():
            logits = table[t].head(features.index_select(0, rows))
            for j, r in enumerate(rows.tolist()):
                out[r] = logits[j]
        return out  # type: ignore[return-value]


def _group_rows(tasks: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    rows: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        rows.setdefault(t, []).append(i)
    return {t: torch.tensor(r, dtype=torch.long, device=device) for t, r in rows.items()}
