"""The adapter file: safetensors tensors plus metadata, and every check made when one is loaded.

Tensors are the TaskAdapter's state dict: ``adapters.<block>.down.weight`` ``[d^, dim]``,
``adapters.<block>.down.bias`` ``[d^]``, ``adapters.<block>.up.weight`` ``[dim, d^]``, ``adapters.<block>.up.bias``
``[dim]``, optional ``adapters.<block>.norm.{weight,bias}`` ``[dim]`` and ``adapters.<block>.scale`` ``[]``,
``head.weight`` ``[classes, features]`` and ``head.bias`` ``[classes]``. See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from adaptformer.config import AdapterConfig
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer.layer import AdaptMLP
from adaptformer.preprocess import InputSpec
from adaptformer.task import TaskAdapter, TaskInfo, extract_task
from adaptformer.temporal import TemporalPart, temporal_from_tensors

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "check_compatible",
    "load_adapter",
    "read_metadata",
    "save_adapter",
    "task_from_bytes",
    "task_to_bytes",
]

FORMAT_NAME = "adaptformer-adapter"
FORMAT_VERSION = "2"
# Format 2 adds a clip task's temporal part (``temporal.*`` tensors, ``temporal`` metadata); format-1 files still
# load, and their clip tasks keep the format-1 clip embedding.
READABLE_VERSIONS = ("1", "2")
MAX_HEADER_BYTES = 8 * 1024 * 1024
REQUIRED_KEYS = (
    "format",
    "format_version",
    "task",
    "method",
    "labels",
    "input",
    "backbone",
    "backbone_fingerprint",
)
JSON_KEYS = ("labels", "input", "config", "metrics", "layers", "temporal")


def _metadata(task: TaskAdapter) -> dict[str, str]:
    info = task.info
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "task": info.task,
        "method": info.method,
        "labels": json.dumps(info.labels),
        "input": info.input.to_json(),
        "backbone": info.backbone,
        "backbone_fingerprint": info.fingerprint,
        "metrics": json.dumps(info.metrics),
        "layers": json.dumps(task.layers),
        "num_classes": str(task.num_classes),
        "backbone_params": str(info.backbone_params),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if task.config is not None:
        meta["config"] = task.config.to_json()
    if task.temporal is not None:
        meta["temporal"] = task.temporal.config.to_json()
    return meta


def task_to_bytes(task: TaskAdapter) -> bytes:
    """Serialises a TaskAdapter to the bytes of an adapter file."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in task.state_dict().items()}
    return st_save(tensors, metadata=_metadata(task))


def atomic_write(path: Path, data: bytes, tag: str = "") -> None:
    """Writes ``data`` to ``path`` so that a crash leaves the old file or the new one, never half of it.

    The temp file is ``.<name>.<tag><random>.tmp`` beside ``path``; ``tag`` lets a caller name the writer.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{tag}", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; an adapter store is read by other users/containers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_adapter(
    model: nn.Module | TaskAdapter,
    path: str | os.PathLike,
    task: str | None = None,
    labels: list[str] | None = None,
    input_spec: InputSpec | None = None,
    metrics: dict | None = None,
    backbone_name: str | None = None,
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
    """
    if isinstance(model, TaskAdapter):
        ta = model
        if task:
            ta.info.task = task
        if labels is not None:
            ta.info.labels = list(labels)
        if metrics:
            ta.info.metrics.update(metrics)
    else:
        if not task:
            raise ValueError("save_adapter needs a task name")
        ta = extract_task(model, task, labels, input_spec, metrics, backbone_name)
    path = Path(path)
    atomic_write(path, task_to_bytes(ta))
    return path


def _parse_header(data: bytes, source: str) -> dict[str, Any]:
    if len(data) < 8:
        raise AdapterFormatError(
            f"{source}: not a safetensors file ({len(data)} bytes; expected an 8-byte header size)"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        hint = " (it looks like a pickle/PyTorch checkpoint)" if data[:2] in (b"\x80\x02", b"\x80\x04", b"PK") else ""
        raise AdapterFormatError(
            f"{source}: not a safetensors file{hint}: declared header of {n:,} bytes, but the file has "
            f"{len(data):,} bytes and headers are limited to {MAX_HEADER_BYTES:,}; adapters must be safetensors "
            "files written by adaptformer"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFormatError(f"{source}: not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{source}: not a safetensors file: its header is not a JSON object")
    return header


def read_metadata(data: bytes, source: str = "adapter") -> dict[str, Any]:
    """Parses and checks the metadata of adapter-file bytes; JSON fields are decoded.

    Raises:
        AdapterFormatError: not safetensors, or metadata missing, malformed or of another format.
    """
    header = _parse_header(data, source)
    raw = header.get("__metadata__")
    if not isinstance(raw, dict):
        raise AdapterFormatError(
            f"{source}: the safetensors file has no metadata; an adapter file carries {', '.join(REQUIRED_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise AdapterFormatError(f"{source}: metadata lacks {', '.join(missing)} (not an adaptformer adapter file?)")
    if raw["format"] != FORMAT_NAME:
        raise AdapterFormatError(f"{source}: metadata format is {raw['format']!r}, expected {FORMAT_NAME!r}")
    if raw["format_version"] not in READABLE_VERSIONS:
        raise AdapterFormatError(
            f"{source}: adapter format version {raw['format_version']!r}; this version reads "
            f"{', '.join(map(repr, READABLE_VERSIONS))}"
        )
    meta: dict[str, Any] = dict(raw)
    for key in JSON_KEYS:
        if key in raw:
            try:
                meta[key] = json.loads(raw[key])
            except (TypeError, json.JSONDecodeError):
                raise AdapterFormatError(f"{source}: metadata field {key!r} is not valid JSON") from None
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
        raise AdapterFormatError(f"{source}: metadata 'labels' must be a non-empty JSON list of strings")
    if meta["method"] not in ("adaptformer", "linear"):
        raise AdapterFormatError(
            f"{source}: method {meta['method']!r} cannot be served; adapter files hold 'adaptformer' or 'linear' "
            "tasks (VPT and full fine-tuning produce checkpoints for evaluation only)"
        )
    if meta["method"] == "adaptformer" and not isinstance(meta.get("config"), dict):
        raise AdapterFormatError(f"{source}: an 'adaptformer' adapter needs a JSON 'config' in its metadata")
    if not isinstance(meta["input"], dict):
        raise AdapterFormatError(f"{source}: metadata 'input' must be a JSON object")
    return meta


def _expect(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], source: str) -> torch.Tensor:
    if name not in tensors:
        raise AdapterFormatError(f"{source}: tensor {name!r} is missing")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise IncompatibleAdapterError(
            f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}", check="shapes"
        )
    return t


def task_from_bytes(data: bytes, source: str = "adapter") -> TaskAdapter:
    """Builds a TaskAdapter from adapter-file bytes, checking metadata, tensor names, shapes and values."""
    meta = read_metadata(data, source)
    try:
        tensors = st_load(data)
    except Exception as e:  # the safetensors parser's own message says what is inconsistent
        raise AdapterFormatError(f"{source}: unreadable safetensors data: {e}") from None
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise AdapterFormatError(f"{source}: tensor {name!r} has dtype {t.dtype}; expected floating point")
        if not torch.isfinite(t).all():
            raise AdapterFormatError(f"{source}: tensor {name!r} holds NaN or infinite values")
    if "head.weight" not in tensors:
        raise AdapterFormatError(f"{source}: tensor 'head.weight' is missing")
    num_classes, features = tensors["head.weight"].shape if tensors["head.weight"].ndim == 2 else (0, 0)
    if num_classes != len(meta["labels"]):
        raise AdapterFormatError(
            f"{source}: head has {num_classes} outputs but metadata lists {len(meta['labels'])} labels"
        )
    head = nn.Linear(features, num_classes)
    head.weight.data.copy_(_expect(tensors, "head.weight", (num_classes, features), source))
    head.bias.data.copy_(_expect(tensors, "head.bias", (num_classes,), source))
    expected = {"head.weight", "head.bias"}

    config = None
    adapters: dict[int, AdaptMLP] = {}
    if meta["method"] == "adaptformer":
        try:
            config = AdapterConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as e:
            raise AdapterFormatError(f"{source}: metadata 'config' is invalid: {e}") from None
        layers = meta.get("layers")
        if not isinstance(layers, list) or not all(isinstance(i, int) and i >= 0 for i in layers):
            raise AdapterFormatError(f"{source}: metadata 'layers' must be a JSON list of block indices")
        for i in layers:
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
    temporal = _temporal_part(meta, tensors, source)
    if temporal is not None:
        expected |= {f"temporal.{name}" for name, _ in temporal.named_parameters()}
    extra = sorted(set(tensors) - expected)
    if extra:
        raise AdapterFormatError(f"{source}: unexpected tensors {extra[:5]} for a {meta['method']!r} adapter")
    try:
        spec = InputSpec.from_dict(meta["input"])
    except (TypeError, ValueError) as e:
        raise AdapterFormatError(f"{source}: metadata 'input' is invalid: {e}") from None
    info = TaskInfo(
        task=str(meta["task"]),
        labels=list(meta["labels"]),
        method=meta["method"],
        input=spec,
        backbone=str(meta["backbone"]),
        fingerprint=str(meta["backbone_fingerprint"]),
        metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {},
        backbone_params=int(meta["backbone_params"]) if str(meta.get("backbone_params", "")).isdigit() else 0,
    )
    return TaskAdapter(info, head, config, adapters, temporal).eval()


def _temporal_part(meta: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> TemporalPart | None:
    """A clip task's temporal part (format 2); ``None`` when the metadata names none."""
    if "temporal" not in meta:
        return None
    spec = meta["input"]
    frames, tubelet = spec.get("frames"), spec.get("tubelet")
    if spec.get("modality") != "clip" or not all(isinstance(v, int) and v >= 1 for v in (frames, tubelet)):
        raise AdapterFormatError(f"{source}: a temporal part needs a clip input spec with frames and tubelet")
    try:
        return temporal_from_tensors(meta["temporal"], tensors, frames, tubelet, source)[0]
    except ValueError as e:
        raise AdapterFormatError(str(e)) from None


def check_compatible(task: TaskAdapter, backbone: nn.Module, fingerprint: str | None = None) -> None:
    """Raises IncompatibleAdapterError (with the failing check) unless ``task`` fits ``backbone``.

    Args:
        task: The loaded task.
        backbone: The frozen timm ViT it will run on.
        fingerprint: The backbone's fingerprint, when already computed.
    """
    from adaptformer.fingerprint import backbone_fingerprint
    from adaptformer.model import base_vit

    vit = base_vit(backbone)
    fingerprint = fingerprint or backbone_fingerprint(vit)
    name = task.name
    if task.info.fingerprint != fingerprint:
        raise IncompatibleAdapterError(
            f"adapter {name!r} was trained on backbone {task.info.backbone!r} with fingerprint "
            f"{task.info.fingerprint}; this server's backbone has fingerprint {fingerprint}",
            check="fingerprint",
        )
    depth, dim = len(vit.blocks), vit.embed_dim
    for i in task.layers:
        if i >= depth:
            raise IncompatibleAdapterError(
                f"adapter {name!r} has a branch in block {i}; the backbone has {depth} blocks", check="shapes"
            )
        if task.adapters[str(i)].down.in_features != dim:
            raise IncompatibleAdapterError(
                f"adapter {name!r} branches have width {task.adapters[str(i)].down.in_features}; the backbone's "
                f"tokens have width {dim}",
                check="shapes",
            )
    if task.head.in_features != vit.num_features:
        raise IncompatibleAdapterError(
            f"adapter {name!r} head takes {task.head.in_features} features; the backbone gives {vit.num_features}",
            check="shapes",
        )
    spec = task.info.input
    if spec.modality == "clip" and getattr(getattr(vit, "patch_embed", None), "proj", None) is None:
        raise IncompatibleAdapterError(f"adapter {name!r} is a clip task; this backbone cannot read clips", "modality")
    if task.temporal is not None:
        proj = vit.patch_embed.proj
        why = task.temporal.check(vit.embed_dim, tuple(proj.kernel_size), proj.in_channels)
        if why:
            raise IncompatibleAdapterError(f"adapter {name!r} does not fit this backbone: {why}", check="shapes")


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
