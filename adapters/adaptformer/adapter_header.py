"""The adapter file's header: one bounded reader and every check that needs no tensor data, and the fit rules.

This module imports no torch: the server's store, the watcher and ``adaptformer inspect`` read headers of
thousands of files with it, and :class:`BackboneSpec` says whether a file fits a backbone from its header alone
(:meth:`BackboneSpec.check_header`) or, once loaded, from its modules (:meth:`BackboneSpec.check_task`).
The tensors themselves (save, load, values) are :mod:`adaptformer.adapter_file`'s. See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from adaptformer.config import AdapterConfig
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer.input_spec import MAX_INPUT_FRAMES, MAX_INPUT_SIZE, InputSpec

if TYPE_CHECKING:
    from torch import nn

    from adaptformer.task import TaskAdapter

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_CLASSES",
    "MAX_HEADER_BYTES",
    "MAX_INPUT_FRAMES",
    "MAX_INPUT_SIZE",
    "READABLE_VERSIONS",
    "BackboneSpec",
    "Header",
    "IncompleteFile",
    "NewerFormatError",
    "adapter_config",
    "atomic_write",
    "branch_shapes",
    "input_spec",
    "parse_header",
    "read_head",
    "read_header",
    "read_metadata",
    "read_safetensors_header",
    "safetensors_header",
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


Readable = str | os.PathLike | BinaryIO | bytes


def _head(file: Readable, source: str | None) -> tuple[bytes, int, str]:
    """The bounded start of ``file`` (a path, an open binary file at its start, or the bytes), its size and name."""
    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file), len(file), source or "adapter"
    if isinstance(file, (str, os.PathLike)):
        try:
            with open(file, "rb") as f:
                return _head(f, source or str(file))
        except FileNotFoundError:
            raise FileNotFoundError(f"file not found: {file}") from None
    name = source or str(getattr(file, "name", "file"))
    size = os.fstat(file.fileno()).st_size
    return read_head(file, size, name), size, name


def read_header(file: Readable, source: str | None = None) -> Header:
    """The checked header of an adapter file (see :func:`parse_header`), reading at most its first ``8 + n`` bytes.

    Args:
        file: A path, an open binary file positioned at its start, or the file's bytes.
        source: Names the file in error messages (default: the path, or ``adapter`` for bytes).

    Raises:
        FileNotFoundError: no such path.
        IncompleteFile, NewerFormatError, AdapterFormatError: as :func:`parse_header`; the size checked is the
            file's full size.
    """
    data, size, name = _head(file, source)
    return parse_header(data, name, size=size)


def read_safetensors_header(file: Readable, source: str | None = None) -> dict[str, Any]:
    """The JSON header of any safetensors file (an adapter or a training checkpoint), bounded and strict JSON,
    nothing more checked; ``file`` as in :func:`read_header`."""
    data, _, name = _head(file, source)
    return safetensors_header(data, name)


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
        adapter_config(meta["config"], source)
    if not isinstance(meta["input"], dict):
        raise AdapterFormatError(f"{source}: metadata 'input' must be a JSON object")
    input_spec(meta["input"], source)
    return meta


def adapter_config(d: dict[str, Any], source: str) -> AdapterConfig:
    """The AdapterConfig of a metadata ``config`` object."""
    try:
        return AdapterConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise AdapterFormatError(f"{source}: metadata 'config' is invalid: {e}") from None


def input_spec(d: dict[str, Any], source: str) -> InputSpec:
    """The InputSpec of a metadata ``input`` object; InputSpec's own rules refuse values that would fail or
    poison every request (the metadata JSON is not typed: a size of 28.0 or a zero std would otherwise only show
    at prediction time, as a 500 or NaN scores)."""
    try:
        return InputSpec.from_dict(d)
    except (TypeError, ValueError, OverflowError) as e:
        raise AdapterFormatError(f"{source}: metadata 'input' is invalid: {e}") from None


def branch_shapes(dim: int, config: AdapterConfig) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of one AdaptMLP branch of width ``dim`` (its state dict; a test holds them equal)."""
    r = config.bottleneck
    shapes: dict[str, tuple[int, ...]] = {
        "down.weight": (r, dim),
        "down.bias": (r,),
        "up.weight": (dim, r),
        "up.bias": (dim,),
    }
    if config.needs_own_norm:
        shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if config.learnable_scale:
        shapes["scale"] = ()
    return shapes


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
    config = adapter_config(meta["config"], source)
    by_dim: dict[int, dict[str, tuple[int, ...]]] = {}
    for i in layers:
        down = shapes.get(f"adapters.{i}.down.weight")
        if down is None or len(down) != 2 or not 1 <= down[1] <= 65_536:
            raise AdapterFormatError(f"{source}: tensor 'adapters.{i}.down.weight' is missing or not 2-D")
        if down[1] not in by_dim:
            by_dim[down[1]] = branch_shapes(down[1], config)
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


@dataclass(frozen=True)
class BackboneSpec:
    """What an adapter must match to run on a backbone: every "fits this backbone" rule, in one place.

    :meth:`check_header` decides from a file's header alone (the store, the watcher, an upload before its tensors
    are read); :meth:`check_task` from a loaded task (the engine, ``load_adapter``). Both apply the same rules.

    Attributes:
        fingerprint: The frozen backbone's fingerprint.
        depth: Its block count.
        embed_dim: Its token width.
        num_features: The width of its pooled features (the head's input).
        img_size: The input size it takes (``None``: any size).
        supports_clips: Whether it can read clips (a VideoViT can wrap it).
        max_frames: Most frames a clip may have where the backbone is served (``None``: no limit).
        patch: Its patch kernel (height, width), which a clip task's temporal kernel must match.
        in_chans: Its input channels, idem.
    """

    fingerprint: str
    depth: int
    embed_dim: int
    num_features: int
    img_size: int | None = None
    supports_clips: bool = True
    max_frames: int | None = None
    patch: tuple[int, int] | None = None
    in_chans: int | None = None

    @classmethod
    def of(cls, backbone: nn.Module, fingerprint: str | None = None, max_frames: int | None = None) -> BackboneSpec:
        """The spec of a timm ViT (or a model wrapping one), read from its modules (imports torch)."""
        from adaptformer.fingerprint import backbone_fingerprint
        from adaptformer.model import base_vit
        from adaptformer.video import clip_support

        vit = base_vit(backbone)
        fixed = not getattr(vit, "dynamic_img_size", False)
        img = getattr(getattr(vit, "patch_embed", None), "img_size", None)
        proj = getattr(getattr(vit, "patch_embed", None), "proj", None)
        kernel = getattr(proj, "kernel_size", None)
        return cls(
            fingerprint=fingerprint or backbone_fingerprint(vit),
            depth=len(vit.blocks),
            embed_dim=vit.embed_dim,
            num_features=vit.num_features,
            img_size=int(img[0]) if fixed and img is not None and img[0] == img[1] else None,
            supports_clips=clip_support(vit) is None,
            max_frames=max_frames,
            patch=(int(kernel[0]), int(kernel[1])) if kernel is not None else None,
            in_chans=getattr(proj, "in_channels", None),
        )

    def _check_fingerprint(self, backbone: str, fingerprint: str, source: str) -> None:
        if fingerprint != self.fingerprint:
            raise IncompatibleAdapterError(
                f"{source} was trained on backbone {backbone[:200]!r} with fingerprint {fingerprint[:80]}; this "
                f"server's backbone has fingerprint {self.fingerprint}",
                check="fingerprint",
            )

    def _check_widths(self, head_features: int, branches: dict[int, int], source: str) -> None:
        """``branches``: block index -> the width its branch takes (checked first: the likelier cause)."""
        for i, width in sorted(branches.items()):
            if i >= self.depth or width != self.embed_dim:
                raise IncompatibleAdapterError(
                    f"{source}: branch of block {i} (width {width}) does not fit a backbone of {self.depth} blocks "
                    f"of width {self.embed_dim}",
                    check="shapes",
                )
        if head_features != self.num_features:
            raise IncompatibleAdapterError(
                f"{source}: its head takes {head_features} features; the backbone gives {self.num_features}",
                check="shapes",
            )

    def check_header(self, header: Header, source: str) -> None:
        """Raises IncompatibleAdapterError (with the failing check) unless the file fits."""
        meta, shapes = header.meta, header.shapes
        self._check_fingerprint(meta["backbone"], meta["backbone_fingerprint"], source)
        layers = meta.get("layers", []) if meta["method"] == "adaptformer" else []
        # parse_header made sure the head and every listed branch are there, 2-D
        self._check_widths(
            shapes["head.weight"][1], {i: shapes[f"adapters.{i}.down.weight"][1] for i in layers}, source
        )
        self.check_input(input_spec(meta["input"], source), source)

    def check_task(self, task: TaskAdapter, source: str | None = None) -> None:
        """Raises IncompatibleAdapterError (with the failing check) unless a loaded task fits, its clip task's
        temporal part included."""
        source = source or f"adapter {task.name!r}"
        self._check_fingerprint(task.info.backbone, task.info.fingerprint, source)
        branches = {i: branch.down.in_features for i, branch in task.branches()}
        self._check_widths(task.head.in_features, branches, source)
        self.check_input(task.info.input, source)
        if task.temporal is not None:
            why = (
                "the backbone has no patch projection"
                if self.patch is None or self.in_chans is None
                else task.temporal.check(self.embed_dim, self.patch, self.in_chans)
            )
            if why:
                raise IncompatibleAdapterError(f"{source} does not fit this backbone: {why}", check="shapes")

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
