"""The adapter store: a directory of ``<task>.safetensors`` files, the source of truth of the registry.

Writes are atomic (temp file, fsync, rename). The registry is rebuilt at start from the file headers only; each
file's version (first 12 hex of the SHA-256 of its bytes) is cached in ``.versions.json`` by size, mtime and
inode, so a restart with thousands of adapters reads headers, not weights. Several server processes may share
one store: each watches it (:class:`StoreWatcher`) and picks up the others' uploads and deletes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from adaptformer.adapter_file import MAX_HEADER_BYTES, atomic_write, read_metadata
from adaptformer.errors import AdapterFormatError

__all__ = [
    "SUFFIX",
    "TASK_PATTERN",
    "AdapterStore",
    "Header",
    "IncompleteFile",
    "Stamp",
    "StoreWatcher",
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
TEMP_MAX_AGE_S = 300.0  # a younger temp file of another host may be a write in progress there
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)-[^.]*\.tmp$")  # .<name>.<host>-<pid>-<random>.tmp


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


class IncompleteFile(AdapterFormatError):
    """A file shorter than its header says: truncated, or still being copied in by hand."""


class Stamp(NamedTuple):
    """What ``stat`` says of a store file; any write (an atomic rename is a new inode) changes it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True)
class StoredFile:
    """One readable adapter file found in the store.

    Attributes:
        stamp: The stamp of the file whose bytes were read (taken from the open file, so a later replace
            shows as a different stamp).
    """

    task: str
    version: str
    size: int
    header: Header
    stamp: Stamp | None = None


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
        _atomic_write(self.path(task), data)

    def delete(self, task: str) -> bool:
        try:
            self.path(task).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def clean_temp_files(self, min_age_s: float = TEMP_MAX_AGE_S) -> int:
        """Removes ``.*.tmp`` leftovers of writes interrupted by a crash.

        In a store shared by several servers a temp file may be a write in progress elsewhere. Temp files name
        their writer (host and process id): one written on this host by a process that no longer exists goes at
        once; any other only when older than ``min_age_s``.
        """
        removed = 0
        now = time.time()
        for p in self.root.glob(".*.tmp"):
            try:
                if not _orphan(p.name) and now - p.stat().st_mtime < min_age_s:
                    continue
                p.unlink()
                removed += 1
                log.warning("removed leftover temp file %s (an interrupted write)", p.name)
            except FileNotFoundError:
                continue  # finished (renamed) or removed by another process meanwhile
            except OSError as e:
                log.warning("cannot remove leftover temp file %s: %s", p.name, e)
        return removed

    def stamps(self) -> dict[str, Stamp]:
        """Task -> stamp of every ``<task>.safetensors`` file with a valid name: one listing, one stat each."""
        found: dict[str, Stamp] = {}
        with os.scandir(self.root) as it:
            for e in it:
                if e.name.startswith(".") or not e.name.endswith(SUFFIX):
                    continue
                task = e.name[: -len(SUFFIX)]
                if not valid_task_name(task):
                    continue
                try:
                    if e.is_file():
                        found[task] = Stamp.of(e.stat())
                except FileNotFoundError:
                    continue  # deleted between the listing and the stat
        return found

    def examine(self, task: str, cached: dict[str, Any] | None = None) -> StoredFile:
        """Reads one file's header and version from a single open file (its stamp is that file's).

        Args:
            task: The task name.
            cached: A ``.versions.json`` record (size, mtime_ns, ino, version); used when the stamp matches.

        Raises:
            FileNotFoundError: no such file (any more).
            AdapterFormatError: not a complete adapter file.
        """
        path = self.path(task)
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            stamp = Stamp.of(st)
            size = st.st_size
            first = f.read(8)
            if len(first) < 8:
                raise AdapterFormatError(f"{path.name}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", first)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise AdapterFormatError(f"{path.name}: not a safetensors file (declared header of {n:,} bytes)")
            header = parse_header(first + f.read(n), path.name)
            if size != header.data_end:
                raise IncompleteFile(
                    f"{path.name}: {size:,} bytes but its header describes {header.data_end:,} (truncated?)"
                )
            if (
                cached
                and Stamp(cached.get("size"), cached.get("mtime_ns"), cached.get("ino")) == stamp
                and (isinstance(cached.get("version"), str))
            ):
                version = cached["version"]
            else:
                f.seek(0)
                version = version_of(f.read())
        return StoredFile(task=task, version=version, size=size, header=header, stamp=stamp)

    def scan(self) -> list[StoredFile]:
        """Every readable, complete adapter file, sorted by task; unreadable ones are skipped with a warning."""
        return self.scan_stamped()[0]

    def scan_stamped(self) -> tuple[list[StoredFile], dict[str, Stamp]]:
        """:meth:`scan`, and the stamp of every file it looked at, readable or not (a watcher's starting point)."""
        cache = self._load_versions()
        fresh: dict[str, dict[str, Any]] = {}
        found: list[StoredFile] = []
        seen: dict[str, Stamp] = {}
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            task = path.name[: -len(SUFFIX)]
            if path.name.startswith(".") or not path.is_file():
                continue
            if not valid_task_name(task):
                log.warning("skipping %s: %r is not a valid task name", path.name, task)
                continue
            try:
                seen[task] = Stamp.of(path.stat())
                f = self.examine(task, cache.get(path.name))
            except (OSError, AdapterFormatError) as e:
                log.warning("skipping %s: %s", path.name, e)
                continue
            assert f.stamp is not None
            seen[task] = f.stamp
            fresh[path.name] = {**f.stamp._asdict(), "version": f.version}
            found.append(f)
        if fresh != cache:
            try:
                _atomic_write(self.root / _VERSIONS, json.dumps(fresh, sort_keys=True).encode())
            except OSError as e:
                log.warning("cannot write the version cache: %s", e)
        return found, seen

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
            _atomic_write(dst, src.read_bytes())
            copied.append(task)
        if matched:
            record = sorted((done or set()) | {fingerprint})
            _atomic_write(self.root / _SEEDED, json.dumps({"fingerprints": record}).encode())
            log.info("seeded demo adapters: %s", ", ".join(copied) or "none new")
        return copied


class StoreWatcher:
    """Notices what other processes did to the store: files added, replaced or removed.

    One poll lists the directory and stats each file (no reads); only files whose stamp (size, mtime, inode)
    changed are opened, their header parsed and their bytes hashed. Polling, unlike inotify, also works on
    network filesystems and container volumes shared by several hosts.

    Args:
        store: The store.
        check: Raises ``AdapterFormatError`` or ``IncompatibleAdapterError`` for a file this server cannot serve.
        seen: The stamps of the files already accounted for (``AdapterStore.scan_stamped``).
    """

    def __init__(self, store: AdapterStore, check: Callable[[StoredFile], None], seen: dict[str, Stamp]) -> None:
        self.store = store
        self._check = check
        self._seen = dict(seen)
        self._warned: dict[str, Stamp] = {}

    def seen(self, task: str) -> Stamp | None:
        """The stamp of ``task``'s file as last looked at (``None``: absent at the last poll)."""
        return self._seen.get(task)

    def poll(self) -> dict[str, StoredFile | None]:
        """What changed since the last poll: task -> its file now, or ``None`` when gone or not servable.

        Blocking (run it in a worker thread). A file that is still being written by hand (shorter than its
        header says) is reported as ``None`` and looked at again on the next poll.
        """
        now = self.store.stamps()
        changes: dict[str, StoredFile | None] = {}
        for task in self._seen.keys() - now.keys():
            del self._seen[task]
            self._warned.pop(task, None)
            changes[task] = None
        for task, stamp in now.items():
            if self._seen.get(task) == stamp:
                continue
            try:
                f = self.store.examine(task)
                self._check(f)
            except FileNotFoundError:
                self._seen.pop(task, None)
                changes[task] = None
                continue
            except (OSError, ValueError) as e:  # AdapterFormatError, IncompatibleAdapterError are ValueErrors
                incomplete = isinstance(e, IncompleteFile)
                if self._warned.get(task) != stamp:
                    self._warned[task] = stamp
                    log.warning("store: %s%s: %s", task, SUFFIX, e)
                if incomplete:
                    self._seen.pop(task, None)  # look again next time: it may still be growing
                else:
                    self._seen[task] = stamp
                changes[task] = None
                continue
            assert f.stamp is not None
            self._seen[task] = f.stamp
            self._warned.pop(task, None)
            changes[task] = f
        return changes


def demo_files() -> list[Path]:
    """The demo adapter files shipped in the ``adaptformer`` package (may be none)."""
    folder = Path(str(resources.files("adaptformer") / "demo"))
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file()) if folder.is_dir() else []


def _atomic_write(path: Path, data: bytes) -> None:
    """The library's atomic write, its temp file named after this host and process (see ``_orphan``)."""
    atomic_write(path, data, tag=f"{_HOST}-{os.getpid()}-")


def _orphan(name: str) -> bool:
    """Whether a temp file was written on this host by a process that is gone."""
    m = _TEMP_OWNER.search(name)
    if m is None or m.group(1) != _HOST:
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # alive (another user's), or not a process id
    return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
