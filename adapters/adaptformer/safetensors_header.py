"""The bounded safetensors header reader: at most ``8 + n`` bytes of a file, strict JSON, the layout rules (no torch).

Adapter files and training checkpoints are both read with it; what an adapter's header must say on top of this is
:mod:`adaptformer.adapter_header`'s. See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, BinaryIO

from adaptformer.errors import AdapterFormatError

__all__ = [
    "DTYPE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TENSORS",
    "IncompleteFile",
    "Readable",
    "declared_length",
    "is_json_int",
    "read_bounded",
    "read_head",
    "read_safetensors_header",
    "safetensors_header",
    "strict_json",
    "tensor_entries",
]

MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 16
MAX_TENSORS = 10_000
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # adapters hold floating-point tensors only

Readable = str | os.PathLike | BinaryIO | bytes


class IncompleteFile(AdapterFormatError):
    """A file shorter than its header says: truncated, or still being copied in by hand (it may yet grow)."""


def declared_length(first: bytes, size: int, source: str) -> int:
    """The header length ``n`` the first 8 bytes of a file of ``size`` bytes declare, within the limits.

    Raises:
        IncompleteFile: fewer than 8 bytes, or a header longer than the file.
        AdapterFormatError: a header over MAX_HEADER_BYTES.
    """
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


def read_head(f: BinaryIO, size: int, source: str) -> bytes:
    """The first ``8 + n`` bytes of an open file of ``size`` bytes (n: its declared header length), bounded."""
    first = f.read(8)
    n = declared_length(first, size, source)
    return first + f.read(n)


def read_bounded(file: Readable, source: str | None) -> tuple[bytes, int, str]:
    """The bounded start of ``file`` (a path, an open binary file at its start, or the bytes), its size and name.

    Raises:
        FileNotFoundError: no such path.
        IncompleteFile, AdapterFormatError: as :func:`declared_length`.
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file), len(file), source or "adapter"
    if isinstance(file, (str, os.PathLike)):
        try:
            with open(file, "rb") as f:
                return read_bounded(f, source or str(file))
        except FileNotFoundError:
            raise FileNotFoundError(f"file not found: {file}") from None
    name = source or str(getattr(file, "name", "file"))
    size = os.fstat(file.fileno()).st_size
    return read_head(file, size, name), size, name


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def strict_json(text: str | bytes, what: str, source: str) -> Any:
    """Strict JSON: UTF-8 text without lone surrogates, finite numbers, nested at most MAX_JSON_DEPTH deep.

    Args:
        text: The JSON text.
        what: Names the value in error messages (``metadata field 'labels'``).
        source: Names the file in error messages.

    Raises:
        AdapterFormatError: anything else.
    """
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


def is_json_int(v: object) -> bool:
    """A JSON integer (bools are not integers here, although Python says they are)."""
    return isinstance(v, int) and not isinstance(v, bool)


def safetensors_header(data: bytes, source: str = "file") -> dict[str, Any]:
    """The JSON header of safetensors bytes (``data`` may stop where the header ends): bounded and strict JSON,
    nothing more checked (training checkpoints are read with it too)."""
    n = declared_length(data[:8], len(data), source)
    header = strict_json(data[8 : 8 + n], "the safetensors header", source)
    if not isinstance(header, dict):
        raise AdapterFormatError(f"{source}: not a safetensors file: its header is not a JSON object")
    return header


def read_safetensors_header(file: Readable, source: str | None = None) -> dict[str, Any]:
    """The JSON header of any safetensors file (an adapter or a training checkpoint), bounded and strict JSON,
    nothing more checked; ``file`` as in :func:`read_bounded`."""
    data, _, name = read_bounded(file, source)
    return safetensors_header(data, name)


def tensor_entries(header: dict[str, Any], source: str) -> tuple[dict[str, tuple[int, ...]], int]:
    """Shapes by tensor name, and the end of the tensor data; the layout rules of safetensors itself.

    Raises:
        AdapterFormatError: too many tensors, a malformed entry, a dtype other than DTYPE_BYTES', or tensors that
            are not laid out one after another from byte 0.
    """
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
        if not isinstance(shape, list) or len(shape) > 8 or not all(is_json_int(d) and d >= 0 for d in shape):
            raise AdapterFormatError(f"{bad}: shape {shape!r} is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_json_int(o) and o >= 0 for o in offsets):
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
