"""TaskAdapter: everything one task adds to the frozen backbone (branches per block, head, labels, input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from torch import nn

from adaptformer.config import AdapterConfig
from adaptformer.fit import check_labels
from adaptformer.layer import AdaptedBlock, AdaptMLP
from adaptformer.model import base_vit, is_task_parameter
from adaptformer.preprocess import InputSpec, spec_from_model
from adaptformer.temporal import TemporalPart

__all__ = ["TaskAdapter", "TaskInfo", "extract_task"]


@dataclass
class TaskInfo:
    """Metadata carried with a task (all of it goes into the adapter file).

    Attributes:
        task: Task name.
        labels: Class names, one per head output.
        method: ``adaptformer`` (branches + head) or ``linear`` (head only).
        input: Input specification (size, mean, std, modality, frames).
        backbone: Backbone name.
        fingerprint: Hash of the frozen backbone weights the task was trained on.
        metrics: Validation metrics and anything else worth keeping.
        backbone_params: Parameter count of the frozen backbone (for the share a task adds).
        description: One line saying what the task answers (shown by the server, ``inspect`` and the client).
        input_note: What a caller must send beyond size and normalisation, e.g. "a light digit on a dark
            background" (the colour convention, framing, channels).
    """

    task: str
    labels: list[str]
    method: str = "adaptformer"
    input: InputSpec = field(default_factory=InputSpec)
    backbone: str = ""
    fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    backbone_params: int = 0
    description: str = ""
    input_note: str = ""


class TaskAdapter(nn.Module):
    """One task's trainable parts, detached from any backbone.

    Attributes:
        adapters: ``{str(block_index): AdaptMLP}``; empty for a linear probe.
        head: The task's classifier on the backbone's pooled features.
        config: The branch configuration (``None`` for a linear probe).
        info: Labels, input spec, provenance and metrics.
        temporal: A clip task's temporal part (``None`` for image tasks and format-1 clip tasks).
    """

    def __init__(
        self,
        info: TaskInfo,
        head: nn.Linear,
        config: AdapterConfig | None,
        adapters: dict[int, AdaptMLP],
        temporal: TemporalPart | None = None,
    ):
        super().__init__()
        self.info = info
        self.config = config
        self.head = head
        self.adapters = nn.ModuleDict({str(i): a for i, a in sorted(adapters.items())})
        self.temporal = temporal

    @property
    def name(self) -> str:
        return self.info.task

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.adapters]

    def branch(self, key: str) -> AdaptMLP:
        """The branch of block ``key`` (``str(block_index)``)."""
        return cast(AdaptMLP, self.adapters[key])

    def branches(self) -> list[tuple[int, AdaptMLP]]:
        """``(block index, branch)`` pairs in block order."""
        return [(int(k), cast(AdaptMLP, a)) for k, a in self.adapters.items()]

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def percent_of_backbone(self) -> float | None:
        """Parameters this task adds, in % of the backbone (``None`` when the backbone size is unknown)."""
        return 100.0 * self.num_parameters() / self.info.backbone_params if self.info.backbone_params else None


def extract_task(
    model: nn.Module,
    task: str,
    labels: list[str] | None = None,
    input_spec: InputSpec | None = None,
    metrics: dict | None = None,
    backbone_name: str | None = None,
    description: str = "",
    input_note: str = "",
) -> TaskAdapter:
    """Takes the adapters, head and temporal part out of an adapted model (sharing their tensors) as a TaskAdapter.

    Raises:
        ValueError: the model has no classification head.
        AdapterFormatError: not one label per head output (a ValueError too).
    """
    from adaptformer.fingerprint import backbone_fingerprint  # local: fingerprint imports model too

    vit = base_vit(model)
    if not isinstance(vit.head, nn.Linear):
        raise ValueError("the model has no classification head; build it with add_adapters(..., num_classes=N)")
    adapters = {i: blk.adapter for i, blk in enumerate(vit.blocks) if isinstance(blk, AdaptedBlock)}
    config = getattr(model, "adapter_config", None) if adapters else None
    labels = list(labels) if labels is not None else [str(i) for i in range(vit.head.out_features)]
    check_labels(len(labels), vit.head.out_features, f"task {task!r}")
    if input_spec is None:
        input_spec = spec_from_model(vit)
        frames = getattr(model, "frames", None)  # a VideoViT (or a model wrapping one)
        if frames is not None:
            input_spec = input_spec.as_clip(int(frames), int(getattr(model, "tubelet", 1)))
    info = TaskInfo(
        task=task,
        labels=labels,
        method="adaptformer" if adapters else "linear",
        input=input_spec,
        backbone=backbone_name or (getattr(vit, "pretrained_cfg", None) or {}).get("architecture", type(vit).__name__),
        fingerprint=backbone_fingerprint(model),
        metrics=dict(metrics or {}),
        backbone_params=sum(p.numel() for n, p in vit.named_parameters() if not is_task_parameter(n)),
        description=description,
        input_note=input_note,
    )
    temporal = getattr(model, "temporal", None)
    return TaskAdapter(info, vit.head, config, adapters, temporal if isinstance(temporal, TemporalPart) else None)
