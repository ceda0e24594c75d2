"""The adapter store: a directory of ``<task>.safetensors`` files, the source of truth of the registry.

Writes are atomic (temp file, fsync, rename). The registry is rebuilt at start from the file headers only; each
file's version (first 12 hex of the SHA-256 of its bytes) is cached in ``.versions.json`` by size, mtime and
inode, so a restart with thousands of adapters reads headers, not weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from adaptformer.adapter_file import MAX_HEADER_BYTES, atomic_write, read_metadata
from adaptformer.errors import AdapterFormatError

__all__ = [
    "SUFFIX",
    "TASK_PATTERN",
    "AdapterStore",
    "Header",
    "StoredFile",
    "demo_files",
    "parse_header",
    "valid_task_name",
    "version_of",
]

log = logging.getLogger("adaptformer_server.store")

SUFFIX = ".safetensors"
TASK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TASK_RE = re.compile(TASK_PATTERN)
_VERSIONS = ".versions.json"
_SEEDED = ".seeded"


def valid_task_name(name: str) -> bool:
    """Task names are file names in the store: a safe pattern and never ``..``."""
    return bool(_TASK_RE.fullmatch(name)) and ".." not in name


def version_of(data: bytes) -> str:
    """The version of an adapter file: the first 12 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass(frozen=True)
class Header:
    """What the safetensors header of an adapter file says, without its tensors.

    Attributes:
        meta: The adapter metadata (JSON fields decoded), checked by ``adaptformer.read_metadata``.
        shapes: Tensor name -> shape.
        data_end: Bytes the file must have: 8 + header length + the end of the last tensor.
    """

    meta: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    data_end: int

    @property
    def params(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())


def parse_header(head: bytes, source: str) -> Header:
    """Parses the first ``8 + n`` bytes of an adapter file (n: the declared header length)."""
    meta = read_metadata(head, source)
    (n,) = struct.unpack("<Q", head[:8])
    raw = json.loads(head[8 : 8 + n])
    shapes: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, t in raw.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in t["shape"])
            end = max(end, int(t["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise AdapterFormatError(f"{source}: malformed safetensors entry for tensor {name!r}") from None
    return Header(meta=meta, shapes=shapes, data_end=8 + n + end)


def _read_head(path: Path) -> tuple[bytes, int]:
    """The first ``8 + n`` bytes of a file and its size."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        if len(first) < 8:
            raise AdapterFormatError(f"{path.name}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", first)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise AdapterFormatError(f"{path.name}: not a safetensors file (declared header of {n:,} bytes)")
        return first + f.read(n), size


@dataclass(frozen=True)
class StoredFile:
    """One readable adapter file found in the store."""

    task: str
    version: str
    size: int
    header: Header


class AdapterStore:
    """The directory of adapter files.

    Args:
        root: The store directory (created when missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, task: str) -> Path:
        if not valid_task_name(task):
            raise ValueError(f"invalid task name {task!r}")
        return self.root / f"{task}{SUFFIX}"

    def read(self, task: str) -> bytes:
        return self.path(task).read_bytes()

    def write(self, task: str, data: bytes) -> None:
        """Writes atomically: a crash leaves the previous file or the new one, never a half file."""
        atomic_write(self.path(task), data)

    def delete(self, task: str) -> bool:
        try:
            self.path(task).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def clean_temp_files(self) -> int:
        """Removes ``.*.tmp`` leftovers of writes interrupted by a crash."""
        removed = 0
        for p in self.root.glob(".*.tmp"):
            try:
                p.unlink()
                removed += 1
                log.warning("removed leftover temp file %s (an interrupted write)", p.name)
            except OSError as e:
                log.warning("cannot remove leftover temp file %s: %s", p.name, e)
        return removed

    def scan(self) -> list[StoredFile]:
        """Every readable, complete adapter file, sorted by task; unreadable ones are skipped with a warning."""
        cache = self._load_versions()
        fresh: dict[str, dict[str, Any]] = {}
        found: list[StoredFile] = []
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            task = path.name[: -len(SUFFIX)]
            if path.name.startswith(".") or not path.is_file():
                continue
            if not valid_task_name(task):
                log.warning("skipping %s: %r is not a valid task name", path.name, task)
                continue
            try:
                head, size = _read_head(path)
                header = parse_header(head, path.name)
                if size != header.data_end:
                    raise AdapterFormatError(
                        f"{path.name}: {size:,} bytes but its header describes {header.data_end:,} (truncated?)"
                    )
                st = path.stat()
                stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
                cached = cache.get(path.name)
                if (
                    cached
                    and all(cached.get(k) == v for k, v in stamp.items())
                    and isinstance(cached.get("version"), str)
                ):
                    version = cached["version"]
                else:
                    version = version_of(path.read_bytes())
                fresh[path.name] = {**stamp, "version": version}
            except (OSError, AdapterFormatError) as e:
                log.warning("skipping %s: %s", path.name, e)
                continue
            found.append(StoredFile(task=task, version=version, size=size, header=header))
        if fresh != cache:
            try:
                atomic_write(self.root / _VERSIONS, json.dumps(fresh, sort_keys=True).encode())
            except OSError as e:
                log.warning("cannot write the version cache: %s", e)
        return found

    def _load_versions(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / _VERSIONS).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    # -- demo adapters -----------------------------------------------------------------------------------
    def seeded_fingerprints(self) -> set[str] | None:
        """Fingerprints the store was seeded for; ``None`` when never seeded."""
        marker = self.root / _SEEDED
        if not marker.exists():
            return None
        try:
            data = json.loads(marker.read_text() or "{}")
            return set(data.get("fingerprints", [])) if isinstance(data, dict) else set()
        except (OSError, ValueError):
            return set()

    def seed(self, fingerprint: str, sources: list[Path]) -> list[str]:
        """Copies the demo files trained on ``fingerprint`` once, then records it in the ``.seeded`` marker.

        A demo task deleted later stays deleted: the marker says this backbone was seeded already. Files of
        other backbones are left out; with none that fits, no marker is written (a later backbone may fit).
        """
        done = self.seeded_fingerprints()
        if done is not None and (fingerprint in done or not done):
            return []
        copied: list[str] = []
        matched = False
        for src in sources:
            task = src.name[: -len(SUFFIX)]
            try:
                head, _ = _read_head(src)
                meta = parse_header(head, src.name).meta
            except (OSError, AdapterFormatError) as e:
                log.warning("demo adapter %s is unreadable: %s", src.name, e)
                continue
            if meta["backbone_fingerprint"] != fingerprint or not valid_task_name(task):
                continue
            matched = True
            dst = self.root / src.name
            if dst.exists():
                log.info("demo adapter %s not copied: the store already has a task of that name", task)
                continue
            atomic_write(dst, src.read_bytes())
            copied.append(task)
        if matched:
            record = sorted((done or set()) | {fingerprint})
            atomic_write(self.root / _SEEDED, json.dumps({"fingerprints": record}).encode())
            log.info("seeded demo adapters: %s", ", ".join(copied) or "none new")
        return copied


def demo_files() -> list[Path]:
    """The demo adapter files shipped in the ``adaptformer`` package (may be none)."""
    folder = Path(str(resources.files("adaptformer") / "demo"))
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file()) if folder.is_dir() else []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
