"""An adapter file's header, checked: the safetensors layout, the metadata and the tensor shapes together (no torch).

The pieces are their own modules: the bounded reader (:mod:`adaptformer.safetensors_header`), the metadata model
(:mod:`adaptformer.metadata`) and the shape rules (:mod:`adaptformer.fit`); :func:`parse_header` runs them all, so
the server's store, the watcher and ``adaptformer inspect`` read headers of thousands of files without torch. The
tensors themselves (save, load, values) are :mod:`adaptformer.adapter_file`'s. See docs/ADAPTER_FORMAT.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adaptformer.errors import AdapterFormatError
from adaptformer.fit import check_tensor_shapes
from adaptformer.metadata import AdapterMetadata
from adaptformer.safetensors_header import (
    IncompleteFile,
    Readable,
    declared_length,
    read_bounded,
    safetensors_header,
    tensor_entries,
)

__all__ = ["Header", "parse_header", "read_header", "read_metadata"]


@dataclass(frozen=True)
class Header:
    """What the safetensors header of an adapter file says, checked, without its tensor data.

    Attributes:
        metadata: The adapter metadata, typed.
        shapes: Tensor name -> shape.
        data_end: Bytes the file must have: 8 + header length + the end of the last tensor.
    """

    metadata: AdapterMetadata
    shapes: dict[str, tuple[int, ...]]
    data_end: int

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable record of this checked header: lossless, :meth:`from_json` reads it back."""
        return {
            "metadata": self.metadata.to_json(),
            "shapes": {name: list(shape) for name, shape in self.shapes.items()},
            "data_end": self.data_end,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Header:
        """The header a :meth:`to_json` record describes, trusted: it was checked when it was made (a cache).

        Raises:
            KeyError, TypeError, ValueError, AttributeError: not such a record.
        """
        return cls(
            metadata=AdapterMetadata.from_json(record["metadata"]),
            shapes={name: tuple(shape) for name, shape in record["shapes"].items()},
            data_end=int(record["data_end"]),
        )


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
    n = declared_length(data[:8], len(data), source)
    header = safetensors_header(data, source)
    shapes, end = tensor_entries(header, source)
    metadata = AdapterMetadata.from_strings(header.get("__metadata__"), source)
    check_tensor_shapes(metadata, shapes, source)
    parsed = Header(metadata=metadata, shapes=shapes, data_end=8 + n + end)
    if size is not None and size != parsed.data_end:
        error = IncompleteFile if size < parsed.data_end else AdapterFormatError
        raise error(f"{source}: {size:,} bytes but its header describes {parsed.data_end:,} (truncated?)")
    return parsed


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
    data, size, name = read_bounded(file, source)
    return parse_header(data, name, size=size)


def read_metadata(data: bytes, source: str = "adapter") -> AdapterMetadata:
    """The checked metadata of adapter-file bytes (see :func:`parse_header`).

    Raises:
        AdapterFormatError: not safetensors, or metadata missing, malformed or of another format.
    """
    return parse_header(data, source).metadata
