"""The one record of a stored adapter version (:class:`AdapterEntry`) and the stamp of a store file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple

from adaptformer.adapter_header import Header
from adaptformer.metadata import AdapterMetadata
from adaptformer.preprocess import InputSpec
from adaptformer_server.repository.names import valid_version

__all__ = ["AdapterEntry", "Stamp"]


class Stamp(NamedTuple):
    """What ``stat`` says of a store file; any write (an atomic rename is a new inode) changes it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    def matches(self, record: Any) -> bool:
        """Whether an index record (``size``, ``mtime_ns``, ``ino``) was written for exactly this stamp."""
        return isinstance(record, dict) and all(record.get(k) == v for k, v in zip(self._fields, self, strict=True))


@dataclass(frozen=True)
class AdapterEntry:
    """One version of one task as its checked file header describes it; immutable (a new upload is a new entry).

    The store finds them (scans, the watcher, the history), the registry serves them, the index on disk keeps
    them across restarts, requests are admitted with them.

    Attributes:
        size_bytes: The file's size.
        stamp: The stamp of the file whose bytes were read, when read from the store (a later replace shows as a
            different stamp); ``None`` for bytes not read from a store file (an upload before it is stored).
        stored_ns: When a kept version entered the store (its history copy's mtime; 0 when not listed from the
            history): the order of a task's versions.
    """

    task: str
    version: str
    size_bytes: int
    header: Header
    stamp: Stamp | None = None
    stored_ns: int = 0

    @property
    def key(self) -> str:
        """The name this version has in a batch's task table (``task@version``)."""
        return f"{self.task}@{self.version}"

    @property
    def metadata(self) -> AdapterMetadata:
        return self.header.metadata

    @property
    def spec(self) -> InputSpec:
        return self.header.metadata.input

    @property
    def labels(self) -> list[str]:
        return list(self.header.metadata.labels)

    def info(self, resident: bool, backbone_params: int) -> dict[str, Any]:
        """The contract's AdapterInfo."""
        meta = self.metadata
        spec = self.spec
        params = self.header.params
        return {
            "task": self.task,
            "description": meta.description,
            "input": {
                "size": spec.size,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "interpolation": spec.interpolation,
                "frames": spec.frames,
                "note": meta.input_note,
            },
            "version": self.version,
            "method": meta.method,
            "modality": spec.modality,
            "frames": spec.frames,
            "num_classes": meta.num_classes,
            "labels": self.labels,
            "params": params,
            "percent_of_backbone": round(100.0 * params / max(backbone_params, 1), 4),
            "size_bytes": self.size_bytes,
            "backbone": meta.backbone,
            "fingerprint": meta.backbone_fingerprint,
            "config": meta.config.to_dict() if meta.config is not None else None,
            "metrics": meta.metrics,
            "created": meta.created,
            "resident": resident,
        }

    # -- the index on disk ------------------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The index record of a file that passed the checks (its stamp, version and checked header)."""
        assert self.stamp is not None
        h, st = self.header, self.stamp
        return {"size": st.size, "mtime_ns": st.mtime_ns, "ino": st.ino, "version": self.version, "header": h.to_json()}

    @classmethod
    def from_record(cls, task: str, stamp: Stamp, record: Any) -> AdapterEntry | None:
        """The entry an index record describes, when the record is for exactly this stamp; else ``None``."""
        if not stamp.matches(record):
            return None
        try:
            h, version = record["header"], record["version"]
            header = Header.from_json(h)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not isinstance(version, str) or not valid_version(version) or header.data_end != stamp.size:
            return None
        return cls(task=task, version=version, size_bytes=stamp.size, header=header, stamp=stamp)
