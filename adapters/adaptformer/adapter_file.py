"""The adapter file: safetensors tensors plus metadata; saving, loading and the checks of the tensor data.

Tensors are the TaskAdapter's state dict: ``adapters.<block>.down.weight`` ``[d^, dim]``,
``adapters.<block>.down.bias`` ``[d^]``, ``adapters.<block>.up.weight`` ``[dim, d^]``, ``adapters.<block>.up.bias``
``[dim]``, optional ``adapters.<block>.norm.{weight,bias}`` ``[dim]`` and ``adapters.<block>.scale`` ``[]``,
``head.weight`` ``[classes, features]`` and ``head.bias`` ``[classes]``. See docs/ADAPTER_FORMAT.md.

The header (every check that needs no tensor data) is :mod:`adaptformer.adapter_header`'s and the fit rules
(:class:`~adaptformer.fit.BackboneSpec`) are :mod:`adaptformer.fit`'s; neither imports torch.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from adaptformer.adapter_header import Header, parse_header
from adaptformer.atomic import atomic_write
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer.fit import BackboneSpec, check_labels
from adaptformer.layer import AdaptMLP
from adaptformer.metadata import FORMAT_VERSION, AdapterMetadata, Method
from adaptformer.preprocess import InputSpec
from adaptformer.task import TaskAdapter, TaskInfo, extract_task
from adaptformer.temporal import TemporalPart, temporal_from_tensors

__all__ = ["check_compatible", "load_adapter", "save_adapter", "task_from_bytes", "task_to_bytes"]


# A TaskInfo field and the metadata field that holds it as it is (the other fields change type or come from the task).
_SAME = {
    "task": "task",
    "input": "input",
    "backbone": "backbone",
    "fingerprint": "backbone_fingerprint",
    "backbone_params": "backbone_params",
    "description": "description",
    "input_note": "input_note",
}


def _metadata(task: TaskAdapter) -> AdapterMetadata:
    info = task.info
    return AdapterMetadata(
        **{field: getattr(info, name) for name, field in _SAME.items()},
        method=cast(Method, info.method),  # parse_header refuses any other method before the file is written
        labels=tuple(info.labels),
        config=task.config,
        layers=tuple(task.layers),
        metrics=info.metrics,
        temporal=task.temporal.metadata() if task.temporal is not None else None,
        # A format-3 temporal part is refused by a format-2 reader as a newer format, not misread.
        format_version="3" if task.temporal is not None and task.temporal.config.format3 else FORMAT_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def task_to_bytes(task: TaskAdapter) -> bytes:
    """Serialises a TaskAdapter to the bytes of an adapter file."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in task.state_dict().items()}
    data = st_save(tensors, metadata=_metadata(task).to_strings())
    parse_header(data, f"adapter {task.name!r}", size=len(data))  # never write a file the reader refuses
    return data


def save_adapter(
    model: nn.Module | TaskAdapter,
    path: str | os.PathLike,
    task: str | None = None,
    labels: list[str] | None = None,
    input_spec: InputSpec | None = None,
    metrics: dict | None = None,
    backbone_name: str | None = None,
    description: str | None = None,
    input_note: str | None = None,
) -> Path:
    """Writes an adapter file (atomically) from an adapted model or a TaskAdapter.

    Args:
        model: A model from :func:`add_adapters` / :func:`linear_probe`, or a TaskAdapter.
        path: Destination ``.safetensors`` file.
        task: Task name (required for a model; a TaskAdapter keeps its own unless given).
        labels: Class names, one per head output (default ``"0"``, ``"1"``...).
        input_spec: Input specification; read from the model's data config by default.
        metrics: Validation metrics to record.
        backbone_name: Backbone name to record (the timm architecture by default).
        description: One line saying what the task answers.
        input_note: What a caller must send beyond size and normalisation (e.g. "a light digit on a dark
            background"); shown with the adapter by the server, ``adaptformer inspect`` and the client.
    """
    if isinstance(model, TaskAdapter):
        ta = model
        if task:
            ta.info.task = task
        if labels is not None:
            check_labels(len(labels), ta.num_classes, f"adapter {ta.name!r}")
            ta.info.labels = list(labels)
        if metrics:
            ta.info.metrics.update(metrics)
    else:
        if not task:
            raise ValueError("save_adapter needs a task name")
        ta = extract_task(model, task, labels, input_spec, metrics, backbone_name)
    if description is not None:
        ta.info.description = description
    if input_note is not None:
        ta.info.input_note = input_note
    path = Path(path)
    atomic_write(path, task_to_bytes(ta))
    return path


def _expect(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    if name not in tensors:
        raise AdapterFormatError(f"{source}: tensor {name!r} is missing")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise IncompatibleAdapterError(
            f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}", check="shapes"
        )
    return t


def task_from_bytes(data: bytes, source: str = "adapter", header: Header | None = None) -> TaskAdapter:
    """Builds a TaskAdapter from adapter-file bytes, checking metadata, tensor names, shapes and values.

    Args:
        data: The file's bytes.
        source: Names the file in error messages.
        header: The header of these bytes, when the caller has parsed it already (``parse_header(data, source,
            size=len(data))``: the server checks headers before it reads tensors); parsed here otherwise.

    Raises:
        IncompleteFile, NewerFormatError, AdapterFormatError: as :func:`~adaptformer.adapter_header.parse_header`,
            or tensor data that is unreadable, not floating point, not finite in float32, missing or unexpected.
        IncompatibleAdapterError: a tensor of a shape its metadata does not describe.
    """
    metadata = (header or parse_header(data, source, size=len(data))).metadata
    try:
        tensors = st_load(data)
    except Exception as e:  # the safetensors parser's own message says what is inconsistent
        raise AdapterFormatError(f"{source}: unreadable safetensors data: {e}") from None
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise AdapterFormatError(f"{source}: tensor {name!r} has dtype {t.dtype}; expected floating point")
        # a task's modules are float32: 1e300 in a float64 file is finite there and infinite here
        if not torch.isfinite(t.float()).all():
            raise AdapterFormatError(
                f"{source}: tensor {name!r} holds NaN or infinite values, or values beyond the range of float32"
            )
    if "head.weight" not in tensors:
        raise AdapterFormatError(f"{source}: tensor 'head.weight' is missing")
    num_classes, features = tensors["head.weight"].shape if tensors["head.weight"].ndim == 2 else (0, 0)
    check_labels(len(metadata.labels), num_classes, source)
    head = nn.Linear(features, num_classes)
    head.weight.data.copy_(_expect(tensors, "head.weight", (num_classes, features), source))
    head.bias.data.copy_(_expect(tensors, "head.bias", (num_classes,), source))
    expected = {"head.weight", "head.bias"}

    config = metadata.config
    adapters: dict[int, AdaptMLP] = {}
    if config is not None:
        for i in metadata.layers:
            down = tensors.get(f"adapters.{i}.down.weight")
            if down is None or down.ndim != 2:
                raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.down.weight' is missing or not 2-D")
            dim = down.shape[1]
            adapter = AdaptMLP(dim, config)
            for name, param in adapter.state_dict().items():
                key = f"adapters.{i}.{name}"
                param.copy_(_expect(tensors, key, tuple(param.shape), source))
                expected.add(key)
            adapters[i] = adapter
    temporal = _temporal_part(metadata, tensors, source)
    if temporal is not None:
        expected |= {f"temporal.{name}" for name, _ in temporal.named_parameters()}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise AdapterFormatError(f"{source}: unexpected tensors {extra[:5]} for a {metadata.method!r} adapter")
    info = TaskInfo(
        **{name: getattr(metadata, field) for name, field in _SAME.items()},
        labels=list(metadata.labels),
        method=metadata.method,
        metrics=dict(metadata.metrics),
    )
    return TaskAdapter(info, head, config, adapters, temporal).eval()


def _temporal_part(metadata: AdapterMetadata, tensors: dict[str, torch.Tensor], source: str) -> TemporalPart | None:
    """A clip task's temporal part (format 2); ``None`` when the metadata names none."""
    if metadata.temporal is None:
        return None
    spec = metadata.input
    if spec.modality != "clip":
        raise AdapterFormatError(f"{source}: a temporal part needs a clip input spec with frames and tubelet")
    try:
        return temporal_from_tensors(metadata.temporal, tensors, spec.frames, spec.tubelet, source)[0]
    except ValueError as e:
        raise AdapterFormatError(str(e)) from None


def check_compatible(task: TaskAdapter, backbone: nn.Module, fingerprint: str | None = None) -> None:
    """Raises IncompatibleAdapterError (with the failing check) unless ``task`` fits ``backbone``.

    The rules are :meth:`BackboneSpec.check_task`'s; a caller checking many tasks keeps one
    :meth:`BackboneSpec.of` (the engine does).

    Args:
        task: The loaded task.
        backbone: The frozen timm ViT it will run on.
        fingerprint: The backbone's fingerprint, when already computed.
    """
    BackboneSpec.of(backbone, fingerprint).check_task(task)


def load_adapter(
    path: str | os.PathLike, backbone: nn.Module | None = None, fingerprint: str | None = None
) -> TaskAdapter:
    """Reads an adapter file; with ``backbone``, also checks that it fits (fingerprint and shapes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"adapter file not found: {path}") from None
    task = task_from_bytes(data, source=str(path))
    if backbone is not None:
        check_compatible(task, backbone, fingerprint)
    return task
