"""The adapter file: safetensors tensors plus metadata, and every check made when one is loaded.

Tensors are the TaskAdapter's state dict: ``adapters.<block>.down.weight`` ``[d^, dim]``,
``adapters.<block>.down.bias`` ``[d^]``, ``adapters.<block>.up.weight`` ``[dim, d^]``, ``adapters.<block>.up.bias``
``[dim]``, optional ``adapters.<block>.norm.{weight,bias}`` ``[dim]`` and ``adapters.<block>.scale`` ``[]``,
``head.weight`` ``[classes, features]`` and ``head.bias`` ``[classes]``. See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
    "MAX_CLASSES",
    "MAX_HEADER_BYTES",
    "BackboneSpec",
    "Header",
    "IncompleteFile",
    "NewerFormatError",
    "check_compatible",
    "input_spec",
    "load_adapter",
    "parse_header",
    "read_head",
    "read_metadata",
    "safetensors_header",
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
# Optional one-line texts for callers (what the task answers, what input it expects).
TEXT_KEYS = ("description", "input_note")
MAX_TEXT_CHARS = 300


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
    for key in TEXT_KEYS:
        if getattr(info, key):
            meta[key] = getattr(info, key)
    if task.config is not None:
        meta["config"] = task.config.to_json()
    if task.temporal is not None:
        meta["temporal"] = task.temporal.config.to_json()
    return meta


def task_to_bytes(task: TaskAdapter) -> bytes:
    """Serialises a TaskAdapter to the bytes of an adapter file."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in task.state_dict().items()}
    data = st_save(tensors, metadata=_metadata(task))
    parse_header(data, f"adapter {task.name!r}", size=len(data))  # never write a file the reader refuses
    return data


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


# -- the header: one bounded reader, and every check that needs no tensor data ---------------------------------
# Limits on what a header may hold: an adapter's metadata is served on every GET /adapters, so it is kept small.
MAX_CLASSES = 32_768  # ImageNet-21k has 21,843
MAX_LABEL_CHARS = 256
MAX_METADATA_KEYS = 64
MAX_FIELD_BYTES = {"labels": 2 * 1024 * 1024, "metrics": 64 * 1024}  # any other field: DEFAULT_FIELD_BYTES
DEFAULT_FIELD_BYTES = 16 * 1024
MAX_JSON_DEPTH = 16
MAX_TENSORS = 10_000
MAX_BLOCK_INDEX = 1023
MAX_INPUT_SIZE = 4096
MAX_INPUT_FRAMES = 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # adapters hold floating-point tensors only
_DIGITS = re.compile(r"[0-9]{1,18}")


class IncompleteFile(AdapterFormatError):
    """A file shorter than its header says: truncated, or still being copied in by hand (it may yet grow)."""


class NewerFormatError(AdapterFormatError):
    """A file of a format version newer than this adaptformer reads (a newer server sharing the store wrote it)."""


@dataclass(frozen=True)
class Header:
    """What the safetensors header of an adapter file says, checked, without its tensor data.

    Attributes:
        meta: The adapter metadata, JSON fields decoded.
        shapes: Tensor name -> shape.
        data_end: Bytes the file must have: 8 + header length + the end of the last tensor.
    """

    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    data_end: int

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def read_head(f: BinaryIO, size: int, source: str) -> bytes:
    """The first ``8 + n`` bytes of an open file of ``size`` bytes (n: its declared header length), bounded."""
    first = f.read(8)
    n = _declared_length(first, size, source)
    return first + f.read(n)


def _declared_length(first: bytes, size: int, source: str) -> int:
    if len(first) < 8:
        raise IncompleteFile(f"{source}: not a safetensors file ({size} bytes; expected an 8-byte header size)")
    (n,) = struct.unpack("<Q", first[:8])
    if n > MAX_HEADER_BYTES or 8 + n > size:
        hint = " (it looks like a pickle/PyTorch checkpoint)" if first[:2] in (b"\x80\x02", b"\x80\x04", b"PK") else ""
        error = AdapterFormatError if n > MAX_HEADER_BYTES else IncompleteFile
        raise error(
            f"{source}: not a safetensors file{hint}: declared header of {n:,} bytes, but the file has "
            f"{size:,} bytes and headers are limited to {MAX_HEADER_BYTES:,}; adapters must be safetensors "
            "files written by adaptformer"
        )
    return n


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _loads(text: str | bytes, what: str, source: str) -> Any:
    """Strict JSON: UTF-8 text without lone surrogates, finite numbers, nested at most MAX_JSON_DEPTH deep."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise AdapterFormatError(f"{source}: {what} is not JSON: it is not UTF-8 text") from None
    except RecursionError:
        raise AdapterFormatError(f"{source}: {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError as e:  # JSONDecodeError, a refused constant, an integer of over 4,300 digits
        raise AdapterFormatError(f"{source}: {what} is not valid JSON ({e})") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise AdapterFormatError(f"{source}: {what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
            items = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
        elif isinstance(v, str) and not _is_text(v):
            raise AdapterFormatError(f"{source}: {what} holds a string that is not valid Unicode (a lone surrogate)")
    return value


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _index(v: object) -> bool:
    """A JSON integer (bools are not integers here, although Python says they are)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor_entries(header: dict[str, Any], source: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """Shapes by tensor name, and the end of the tensor data; the layout rules of safetensors itself."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise AdapterFormatError(f"{source}: {len(entries):,} tensors; an adapter file holds at most {MAX_TENSORS:,}")
    shapes: dict[str, tuple[int, ...]] = {}
    spans = []
    for name, t in entries.items():
        bad = f"{source}: malformed safetensors entry for tensor {name!r}"
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise AdapterFormatError(f"{bad}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = t["dtype"], t["shape"], t["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise AdapterFormatError(
                f"{source}: tensor {name!r} has dtype {dtype!r}; adapters hold {', '.join(DTYPE_BYTES)} tensors"
            )
        if not isinstance(shape, list) or len(shape) > 8 or not all(_index(d) and d >= 0 for d in shape):
            raise AdapterFormatError(f"{bad}: shape {shape!r} is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_index(o) and o >= 0 for o in offsets):
            raise AdapterFormatError(f"{bad}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise AdapterFormatError(f"{bad}: data_offsets {offsets} do not hold a {dtype} tensor of shape {shape}")
        shapes[name] = tuple(shape)
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise AdapterFormatError(f"{source}: tensor {name!r} starts at byte {begin:,}, expected {position:,}")
        position = end
    return shapes, position


def _check_version(version: str, source: str) -> None:
    if version in READABLE_VERSIONS:
        return
    newest = max(int(v) for v in READABLE_VERSIONS)
    error = NewerFormatError if _DIGITS.fullmatch(version) and int(version) > newest else AdapterFormatError
    raise error(
        f"{source}: adapter format version {version[:40]!r}; this version reads {', '.join(map(repr, READABLE_VERSIONS))}"
    )


def _check_metadata(raw: object, source: str) -> dict[str, Any]:
    """The checked metadata, JSON fields decoded."""
    if not isinstance(raw, dict):
        raise AdapterFormatError(
            f"{source}: the safetensors file has no metadata; an adapter file carries {', '.join(REQUIRED_KEYS)}"
        )
    if len(raw) > MAX_METADATA_KEYS:
        raise AdapterFormatError(f"{source}: metadata has {len(raw):,} fields; the limit is {MAX_METADATA_KEYS}")
    for key, value in raw.items():
        if not isinstance(value, str):
            raise AdapterFormatError(f"{source}: metadata field {key[:64]!r} is not a string")
        limit = MAX_FIELD_BYTES.get(key, DEFAULT_FIELD_BYTES)
        if len(key) > 64 or len(value.encode("utf-8")) > limit:
            raise AdapterFormatError(f"{source}: metadata field {key[:64]!r} is too large (limit {limit:,} bytes)")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise AdapterFormatError(f"{source}: metadata lacks {', '.join(missing)} (not an adaptformer adapter file?)")
    if raw["format"] != FORMAT_NAME:
        raise AdapterFormatError(f"{source}: metadata format is {raw['format'][:40]!r}, expected {FORMAT_NAME!r}")
    _check_version(raw["format_version"], source)
    meta: dict[str, Any] = dict(raw)
    for key in JSON_KEYS:
        if key in raw:
            meta[key] = _loads(raw[key], f"metadata field {key!r}", source)
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(s, str) for s in labels):
        raise AdapterFormatError(f"{source}: metadata 'labels' must be a non-empty JSON list of strings")
    if len(labels) > MAX_CLASSES:
        raise AdapterFormatError(f"{source}: {len(labels):,} classes; an adapter has at most {MAX_CLASSES:,}")
    if any(len(s) > MAX_LABEL_CHARS for s in labels):
        raise AdapterFormatError(f"{source}: a label is longer than {MAX_LABEL_CHARS} characters")
    for key in TEXT_KEYS:
        if key in meta and (len(meta[key]) > MAX_TEXT_CHARS or not meta[key].isprintable()):
            raise AdapterFormatError(
                f"{source}: metadata {key!r} must be one line of printable text of at most {MAX_TEXT_CHARS} characters"
            )
    for key in ("num_classes", "backbone_params"):
        if key in meta and not _DIGITS.fullmatch(meta[key]):
            raise AdapterFormatError(f"{source}: metadata {key!r} must be a decimal number, got {meta[key][:40]!r}")
    if "num_classes" in meta and int(meta["num_classes"]) != len(labels):
        raise AdapterFormatError(
            f"{source}: head has {meta['num_classes']} outputs (metadata 'num_classes') but metadata lists "
            f"{len(labels)} labels"
        )
    method = meta["method"]
    if method not in ("adaptformer", "linear"):
        raise AdapterFormatError(
            f"{source}: method {method[:40]!r} cannot be served; adapter files hold 'adaptformer' or 'linear' "
            "tasks (VPT and full fine-tuning produce checkpoints for evaluation only)"
        )
    layers = meta.get("layers", [])
    if (
        not isinstance(layers, list)
        or not all(_index(i) and 0 <= i <= MAX_BLOCK_INDEX for i in layers)
        or len(set(layers)) != len(layers)
    ):
        raise AdapterFormatError(
            f"{source}: metadata 'layers' must be a JSON list of distinct block indices (integers 0..{MAX_BLOCK_INDEX})"
        )
    if method == "linear" and layers:
        raise AdapterFormatError(
            f"{source}: a 'linear' adapter has no branches, but its metadata lists layers {layers}"
        )
    if method == "adaptformer":
        if not isinstance(meta.get("config"), dict):
            raise AdapterFormatError(f"{source}: an 'adaptformer' adapter needs a JSON 'config' in its metadata")
        if "layers" not in meta:
            raise AdapterFormatError(f"{source}: an 'adaptformer' adapter needs 'layers' in its metadata")
        _adapter_config(meta["config"], source)
    if not isinstance(meta["input"], dict):
        raise AdapterFormatError(f"{source}: metadata 'input' must be a JSON object")
    input_spec(meta["input"], source)
    return meta


def _adapter_config(d: dict[str, Any], source: str) -> AdapterConfig:
    try:
        return AdapterConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise AdapterFormatError(f"{source}: metadata 'config' is invalid: {e}") from None


def input_spec(d: dict[str, Any], source: str) -> InputSpec:
    """The InputSpec of a metadata ``input`` object, refusing values that would fail or poison every request.

    The metadata JSON is not typed: a size of 28.0, a mean of two values or a zero std would only show at
    prediction time, as a 500 or NaN scores.
    """
    try:
        spec = InputSpec.from_dict(d)
    except (TypeError, ValueError, OverflowError) as e:
        raise AdapterFormatError(f"{source}: metadata 'input' is invalid: {e}") from None

    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v: object, most: int) -> bool:
        return _index(v) and 1 <= v <= most  # type: ignore[operator]

    problems = []
    if not count(spec.size, MAX_INPUT_SIZE):
        problems.append(f"size {spec.size!r} is not an integer in 1..{MAX_INPUT_SIZE}")
    for key in ("mean", "std"):
        values = getattr(spec, key)
        if len(values) != 3 or not all(number(v) for v in values):
            problems.append(f"{key} {list(values)!r} is not 3 finite numbers")
    if any(number(v) and v <= 0 for v in spec.std):
        problems.append(f"std {list(spec.std)!r} has a value <= 0")
    if not count(spec.frames, MAX_INPUT_FRAMES) or not count(spec.tubelet, MAX_INPUT_FRAMES):
        problems.append(
            f"frames {spec.frames!r} and tubelet {spec.tubelet!r} must be integers in 1..{MAX_INPUT_FRAMES}"
        )
    if problems:
        raise AdapterFormatError(f"{source}: metadata 'input' is invalid: {'; '.join(problems)}")
    return spec


def _branch_shapes(dim: int, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of one AdaptMLP branch of width ``dim`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in AdaptMLP(dim, config).state_dict().items()}


def _check_shapes(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """The head and the branches the metadata names are there, with shapes that agree with each other."""
    head, bias = shapes.get("head.weight"), shapes.get("head.bias")
    classes = len(meta["labels"])
    for name, t in (("head.weight", head), ("head.bias", bias)):
        if t is None:
            raise AdapterFormatError(f"{source}: tensor {name!r} is missing")
    assert head is not None and bias is not None
    if len(head) != 2 or head[0] != classes or bias != (classes,):
        raise AdapterFormatError(
            f"{source}: head has {head[0] if head else 0} outputs (shapes {list(head)} and {list(bias)}) but "
            f"metadata lists {classes} labels"
        )
    layers = meta.get("layers", []) if meta["method"] == "adaptformer" else []
    listed = {str(i) for i in layers}
    stray = sorted(n for n in shapes if n.startswith("adapters.") and n.split(".")[1] not in listed)
    if stray:
        raise AdapterFormatError(
            f"{source}: unexpected tensors {stray[:3]}: they belong to no block of metadata 'layers' {layers}"
        )
    if not layers:
        return
    config = _adapter_config(meta["config"], source)
    by_dim: dict[int, dict[str, tuple[int, ...]]] = {}
    for i in layers:
        down = shapes.get(f"adapters.{i}.down.weight")
        if down is None or len(down) != 2 or not 1 <= down[1] <= 65_536:
            raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.down.weight' is missing or not 2-D")
        if down[1] not in by_dim:
            by_dim[down[1]] = _branch_shapes(down[1], config)
        for name, shape in by_dim[down[1]].items():
            got = shapes.get(f"adapters.{i}.{name}")
            if got is None:
                raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.{name}' is missing")
            if got != shape:
                raise AdapterFormatError(
                    f"{source}: tensor 'adapters.{i}.{name}' has shape {list(got) if got else 'none'}, "
                    f"expected {list(shape)} (config {config.to_json()})"
                )


def safetensors_header(data: bytes, source: str = "file") -> dict[str, Any]:
    """The JSON header of safetensors bytes (``data`` may stop where the header ends): bounded and strict JSON,
    nothing more checked (training checkpoints are read with it too)."""
    n = _declared_length(data[:8], len(data), source)
    header = _loads(data[8 : 8 + n], "the safetensors header", source)
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{source}: not a safetensors file: its header is not a JSON object")
    return header


def parse_header(data: bytes, source: str = "adapter", size: int | None = None) -> Header:
    """Reads and checks the header of adapter-file bytes (``data`` may stop where the header ends).

    Every check that needs no tensor data is made here: safetensors layout, metadata types and limits, and that
    the tensors the metadata names are there with agreeing shapes. Upload, start-up and the store watcher run it
    alike, so a file the server accepted is never one its start-up refuses.

    Args:
        data: The file's bytes, or at least its first ``8 + n``.
        source: Names the file in error messages.
        size: The file's full size, when known: checked against the size its header describes.

    Raises:
        IncompleteFile: the file is shorter than its header says (it may still be being copied).
        NewerFormatError: a newer format version.
        AdapterFormatError: anything else wrong.
    """
    n = _declared_length(data[:8], len(data), source)
    header = safetensors_header(data, source)
    shapes, end = _tensor_entries(header, source)
    meta = _check_metadata(header.get("__metadata__"), source)
    _check_shapes(meta, shapes, source)
    parsed = Header(meta=meta, shapes=shapes, data_end=8 + n + end)
    if size is not None and size != parsed.data_end:
        error = IncompleteFile if size < parsed.data_end else AdapterFormatError
        raise error(f"{source}: {size:,} bytes but its header describes {parsed.data_end:,} (truncated?)")
    return parsed


def read_metadata(data: bytes, source: str = "adapter") -> dict[str, Any]:
    """Parses and checks the metadata of adapter-file bytes (see :func:`parse_header`); JSON fields are decoded.

    Raises:
        AdapterFormatError: not safetensors, or metadata missing, malformed or of another format.
    """
    return parse_header(data, source).meta


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
    meta = parse_header(data, source, size=len(data)).meta
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
        config = _adapter_config(meta["config"], source)
        for i in meta["layers"]:
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
    spec = input_spec(meta["input"], source)
    info = TaskInfo(
        task=str(meta["task"]),
        labels=list(meta["labels"]),
        method=meta["method"],
        input=spec,
        backbone=str(meta["backbone"]),
        fingerprint=str(meta["backbone_fingerprint"]),
        metrics=meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {},
        backbone_params=int(meta.get("backbone_params", 0)),
        description=meta.get("description", ""),
        input_note=meta.get("input_note", ""),
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


@dataclass(frozen=True)
class BackboneSpec:
    """What an adapter must match to run on a backbone, read from file headers alone (no tensor data).

    Attributes:
        fingerprint: The frozen backbone's fingerprint.
        depth: Its block count.
        embed_dim: Its token width.
        num_features: The width of its pooled features (the head's input).
        img_size: The input size it takes (``None``: any size).
        supports_clips: Whether it can read clips.
        max_frames: Most frames a clip may have where the backbone is served (``None``: no limit).
    """

    fingerprint: str
    depth: int
    embed_dim: int
    num_features: int
    img_size: int | None = None
    supports_clips: bool = True
    max_frames: int | None = None

    def check_header(self, header: Header, source: str) -> None:
        """Raises IncompatibleAdapterError (with the failing check) unless the file fits."""
        meta = header.meta
        if meta["backbone_fingerprint"] != self.fingerprint:
            raise IncompatibleAdapterError(
                f"{source} was trained on backbone {meta['backbone'][:200]!r} with fingerprint "
                f"{meta['backbone_fingerprint'][:80]}; this server's backbone has fingerprint {self.fingerprint}",
                check="fingerprint",
            )
        head = header.shapes["head.weight"]  # parse_header made sure it is there, 2-D
        if head[1] != self.num_features:
            raise IncompatibleAdapterError(
                f"{source}: head weight has shape {list(head)}, expected [classes, {self.num_features}]",
                check="shapes",
            )
        for i in meta.get("layers", []) if meta["method"] == "adaptformer" else []:
            width = header.shapes[f"adapters.{i}.down.weight"][1]
            if i >= self.depth or width != self.embed_dim:
                raise IncompatibleAdapterError(
                    f"{source}: branch of block {i} (width {width}) does not fit a backbone of {self.depth} blocks "
                    f"of width {self.embed_dim}",
                    check="shapes",
                )
        self.check_input(input_spec(meta["input"], source), source)

    def check_input(self, spec: InputSpec, source: str) -> None:
        """Checks the adapter's input size, modality and frames against the backbone and the server's limit."""
        if self.img_size is not None and spec.size != self.img_size:
            raise IncompatibleAdapterError(
                f"{source} takes {spec.size}x{spec.size} inputs; this backbone takes {self.img_size}x{self.img_size}",
                check="shapes",
            )
        if spec.modality == "clip" and not self.supports_clips:
            raise IncompatibleAdapterError(
                f"{source} is a clip task; this backbone cannot read clips (it needs a Conv2d patch embedding "
                "and absolute position embeddings)",
                check="modality",
            )
        if spec.modality == "clip" and self.max_frames is not None and spec.frames > self.max_frames:
            raise IncompatibleAdapterError(
                f"{source} takes clips of {spec.frames} frames; this server takes at most {self.max_frames} "
                "(max_frames)",
                check="frames",
            )
