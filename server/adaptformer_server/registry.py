"""The registry: task name -> current version and metadata. Rebuilt from the store at start."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from adaptformer.adapter_file import Header
from adaptformer.preprocess import InputSpec

__all__ = ["AdapterEntry", "Registry"]


@dataclass(frozen=True)
class AdapterEntry:
    """One version of one task, as described by its file header (immutable: a new upload is a new entry)."""

    task: str
    version: str
    size_bytes: int
    header: Header

    @property
    def key(self) -> str:
        """The name this version has in a batch's task table (``task@version``)."""
        return f"{self.task}@{self.version}"

    @property
    def meta(self) -> dict[str, Any]:
        return self.header.meta

    @cached_property
    def spec(self) -> InputSpec:
        # Parsed once per entry (an entry is one immutable version), not on every request that reads it.
        return InputSpec.from_dict(self.meta["input"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    def info(self, resident: bool, backbone_params: int) -> dict[str, Any]:
        """The contract's AdapterInfo."""
        meta = self.meta
        spec = self.spec
        params = self.header.params
        metrics = meta.get("metrics")
        return {
            "task": self.task,
            "description": str(meta.get("description", "")),
            "input": {
                "size": spec.size,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "interpolation": spec.interpolation,
                "frames": spec.frames,
                "note": str(meta.get("input_note", "")),
            },
            "version": self.version,
            "method": meta["method"],
            "modality": spec.modality,
            "frames": spec.frames,
            "num_classes": len(meta["labels"]),
            "labels": self.labels,
            "params": params,
            "percent_of_backbone": round(100.0 * params / max(backbone_params, 1), 4),
            "size_bytes": self.size_bytes,
            "backbone": str(meta["backbone"]),
            "fingerprint": str(meta["backbone_fingerprint"]),
            "config": meta.get("config") if isinstance(meta.get("config"), dict) else None,
            "metrics": metrics if isinstance(metrics, dict) else {},
            "created": str(meta.get("created", "")),
            "resident": resident,
        }


class Registry:
    """The current entry of every task. Used from the event loop only, so no lock is needed."""

    def __init__(self) -> None:
        self._entries: dict[str, AdapterEntry] = {}

    def get(self, task: str) -> AdapterEntry | None:
        return self._entries.get(task)

    def put(self, entry: AdapterEntry) -> AdapterEntry | None:
        """Makes ``entry`` the current version of its task; returns the one it replaces."""
        previous = self._entries.get(entry.task)
        self._entries[entry.task] = entry
        return previous

    def remove(self, task: str) -> AdapterEntry | None:
        return self._entries.pop(task, None)

    def current_version(self, task: str) -> str | None:
        entry = self._entries.get(task)
        return entry.version if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.task))
