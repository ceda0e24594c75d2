"""The adapter store: a directory of ``<task>.safetensors`` files, the source of truth of the registry.

Writes are atomic (temp file, fsync, rename). The registry is rebuilt at start from the file headers only; each
file's version (first 12 hex of the SHA-256 of its bytes) is cached in ``.versions.json`` and its checked header in
``.headers.json``, by size, mtime and inode, so a restart with thousands of unchanged adapters lists and stats
them, and opens none. Several server processes may share one store: each watches it (:class:`StoreWatcher`,
whose idle poll is one ``stat`` of the directory) and picks up the others' uploads, rollbacks and deletes.

Versions: ``<task>.safetensors`` is always the current version (what start-up, the watcher and older servers
read). The versions kept for pinning and rollback are copies under ``.history/<task>/<version>.safetensors``, named
by their content (a file whose bytes do not hash to its name is never served). Every step is one atomic rename:
an upload first keeps the version it replaces and the new one in the history, then replaces the current file;
a rollback replaces the current file with a history copy. A crash between two steps leaves at worst an extra
history copy (listed, not current), never a current file that is not a complete version.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from adaptformer import adapter_header, input_spec
from adaptformer import config as adapter_config
from adaptformer.adapter_header import Header, IncompleteFile, NewerFormatError, atomic_write, parse_header, read_header
from adaptformer.errors import AdapterFormatError

__all__ = [
    "HISTORY",
    "SUFFIX",
    "TASK_PATTERN",
    "VERSION_PATTERN",
    "AdapterStore",
    "Header",
    "IncompleteFile",
    "Stamp",
    "StoreWatcher",
    "StoredFile",
    "StoredVersion",
    "demo_files",
    "parse_header",
    "quarantinable",
    "valid_task_name",
    "valid_version",
    "version_of",
]

log = logging.getLogger("adaptformer_server.store")

SUFFIX = ".safetensors"
TASK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_TASK_RE = re.compile(TASK_PATTERN)
VERSION_PATTERN = r"^[0-9a-f]{12}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
HISTORY = ".history"  # .history/<task>/<version>.safetensors: the versions kept for pinning and rollback
_VERSIONS = ".versions.json"
# Checked headers by file stamp, so that a restart need not open unchanged files. Its format names the code that
# checked them (see _headers_format): other checks may differ, so another's records are not trusted (read again).
_HEADERS = ".headers.json"
_SEEDED = ".seeded"
QUARANTINE = ".quarantine"  # files the server cannot read go here, out of the way of start-up and the watcher
RESCAN_S = 60.0  # the watcher lists the whole store at least this often (a file overwritten in place by hand)
RACY_S = 2.0  # a file or directory modified less long ago may change again without its mtime changing
TEMP_MAX_AGE_S = 300.0  # a younger temp file of another host may be a write in progress there
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)-[^.]*\.tmp$")  # .<name>.<host>-<pid>-<random>.tmp


def valid_task_name(name: str) -> bool:
    """Task names are file names in the store: a safe pattern and never ``..``."""
    return bool(_TASK_RE.fullmatch(name)) and ".." not in name


def valid_version(version: str) -> bool:
    """Versions are the first 12 hex digits (lower case) of the SHA-256 of a file's bytes."""
    return bool(_VERSION_RE.fullmatch(version))


def version_of(data: bytes) -> str:
    """The version of an adapter file: the first 12 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def quarantinable(error: BaseException) -> bool:
    """Whether a store file that failed with ``error`` is broken for good (moved aside), rather than still being
    copied in (it may grow) or written by a newer server (which can read it)."""
    return isinstance(error, AdapterFormatError) and not isinstance(error, (IncompleteFile, NewerFormatError))


class Stamp(NamedTuple):
    """What ``stat`` says of a store file; any write (an atomic rename is a new inode) changes it."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    def matches(self, record: Any) -> bool:
        """Whether a cache record (``size``, ``mtime_ns``, ``ino``) was written for exactly this stamp."""
        return isinstance(record, dict) and all(record.get(k) == v for k, v in zip(self._fields, self, strict=True))


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


@dataclass(frozen=True)
class StoredVersion:
    """One kept version of a task.

    Attributes:
        stored_ns: When the version entered the store (the history copy's mtime); the order of the versions.
        current: Whether it is the task's current version.
    """

    task: str
    version: str
    size: int
    stored_ns: int
    current: bool


class AdapterStore:
    """The directory of adapter files.

    Args:
        root: The store directory (created when missing).
        on_quarantine: Called with the task name whenever a file is moved to ``.quarantine/`` (a metric).
        keep_versions: Versions kept per task, the current one included (at least 1).
    """

    def __init__(self, root: Path, on_quarantine: Callable[[str], None] | None = None, keep_versions: int = 3) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self._on_quarantine = on_quarantine
        self.keep_versions = max(1, keep_versions)

    def path(self, task: str) -> Path:
        if not valid_task_name(task):
            raise ValueError(f"invalid task name {task!r}")
        return self.root / f"{task}{SUFFIX}"

    def read(self, task: str) -> bytes:
        return self.path(task).read_bytes()

    def write(self, task: str, data: bytes) -> None:
        """Makes ``data`` the current version of ``task``, keeping the version it replaces.

        Three atomic steps, each safe to crash after: (1) the version being replaced is copied into the history
        when it is not there yet (a file copied in by hand); (2) the new version is written into the history;
        (3) the current file is replaced. Then versions beyond ``keep_versions`` are removed.
        """
        path = self.path(task)
        version = version_of(data)
        try:
            with path.open("rb") as f:
                old, old_mtime = f.read(), os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            old, old_mtime = None, 0
        if old is not None and version_of(old) != version and not self.has_version(task, version_of(old)):
            self._keep(task, version_of(old), old, old_mtime)
        self._keep(task, version, data)
        _atomic_write(path, data)
        self.prune(task)

    def delete(self, task: str) -> bool:
        """Removes the current file, then the task's history (a crash between leaves an orphan history, which
        :meth:`clean_history` removes)."""
        try:
            self.path(task).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        self._remove_history(task)
        return True

    # -- versions ---------------------------------------------------------------------------------------------
    def version_path(self, task: str, version: str) -> Path:
        if not valid_task_name(task) or not valid_version(version):
            raise ValueError(f"invalid task or version {task!r}@{version!r}")
        return self.root / HISTORY / task / f"{version}{SUFFIX}"

    def has_version(self, task: str, version: str) -> bool:
        return self.version_path(task, version).is_file()

    def read_version(self, task: str, version: str) -> bytes:
        """The bytes of one version: the current file when it holds it, else its history copy.

        Raises:
            FileNotFoundError: the store does not hold that version (never kept, or removed since); also when
                a history copy's bytes do not hash to its name (damaged: it is quarantined).
        """
        with contextlib.suppress(FileNotFoundError):
            data = self.read(task)
            if version_of(data) == version:
                return data
        path = self.version_path(task, version)
        data = path.read_bytes()
        if version_of(data) != version:
            self.quarantine_version(task, version, "its bytes do not hash to the version in its name")
            raise FileNotFoundError(str(path))
        return data

    def versions(self, task: str) -> list[StoredVersion]:
        """The kept versions of ``task``, newest first (the current one listed even when it has no history copy,
        e.g. a file copied in by hand). Empty when the task has no current file."""
        path = self.path(task)
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        current = self._current_version(task, st)
        found: dict[str, StoredVersion] = {}
        for v, vst in self._history(task):
            found[v] = StoredVersion(task, v, vst.st_size, vst.st_mtime_ns, v == current)
        if current is not None and current not in found:
            found[current] = StoredVersion(task, current, st.st_size, st.st_mtime_ns, True)
        return sorted(found.values(), key=lambda v: (v.stored_ns, v.version), reverse=True)

    def promote(self, task: str, version: str) -> bytes:
        """Makes a kept version current again (one atomic replace of the current file); returns its bytes.

        Raises:
            FileNotFoundError: the store does not hold that version.
        """
        data = self.read_version(task, version)
        path = self.path(task)
        with contextlib.suppress(FileNotFoundError), path.open("rb") as f:  # a hand-copied current file: keep it
            old, old_mtime = f.read(), os.fstat(f.fileno()).st_mtime_ns
            if not self.has_version(task, version_of(old)):
                self._keep(task, version_of(old), old, old_mtime)
        _atomic_write(path, data)
        self.prune(task)
        return data

    def prune(self, task: str) -> list[str]:
        """Removes history copies beyond ``keep_versions``: the current version and the newest others stay."""
        listed = self.versions(task)
        current = [v for v in listed if v.current]
        others = [v for v in listed if not v.current]
        removed = []
        for v in others[max(0, self.keep_versions - len(current)) :]:
            with contextlib.suppress(FileNotFoundError):
                self.version_path(task, v.version).unlink()
                removed.append(v.version)
        if removed:
            log.info("removed old versions of %s: %s", task, ", ".join(removed))
        return removed

    def clean_history(self, min_age_s: float = TEMP_MAX_AGE_S) -> int:
        """Removes the history of tasks that have no current file (a delete or a first upload cut short by a
        crash), and interrupted history writes; a younger one may be another server's upload in progress."""
        folder = self.root / HISTORY
        if not folder.is_dir():
            return 0
        removed = 0
        now = time.time()
        for d in folder.iterdir():
            if not d.is_dir():
                continue
            for tmp in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    if _orphan(tmp.name) or now - tmp.stat().st_mtime >= min_age_s:
                        tmp.unlink()
            if not valid_task_name(d.name) or self.path(d.name).exists():
                continue
            with contextlib.suppress(OSError):
                if all(now - p.stat().st_mtime >= min_age_s or _orphan(p.name) for p in d.iterdir()):
                    self._remove_history(d.name)
                    removed += 1
                    log.warning("removed the history of %s: the task has no current file", d.name)
        return removed

    def quarantine_version(self, task: str, version: str, reason: str) -> bool:
        """Moves a damaged history copy to ``.quarantine/<task>@<version>.<time>.safetensors``."""
        path = self.version_path(task, version)
        folder = self.root / QUARANTINE
        try:
            folder.mkdir(exist_ok=True)
            moved = folder / f"{task}@{version}.{time.strftime('%Y%m%dT%H%M%S')}{SUFFIX}"
            os.replace(path, moved)
        except OSError:
            return False
        with contextlib.suppress(OSError):
            moved.with_suffix(".reason").write_text(reason[:4000] + "\n")
        log.warning(
            "version %s of %s is damaged: %s (quarantined: moved to %s/%s)",
            version,
            task,
            reason,
            QUARANTINE,
            moved.name,
        )
        if self._on_quarantine is not None:
            self._on_quarantine(task)
        return True

    def _keep(self, task: str, version: str, data: bytes, mtime_ns: int | None = None) -> None:
        """Puts one version into the history (a version kept already only becomes the newest again)."""
        path = self.version_path(task, version)
        if path.is_file() and path.stat().st_size == len(data):
            os.utime(path)
        else:
            _atomic_write(path, data)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def _history(self, task: str) -> list[tuple[str, os.stat_result]]:
        folder = self.root / HISTORY / task
        found = []
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        for e in entries:
            version = e.name[: -len(SUFFIX)]
            if not e.name.endswith(SUFFIX) or not valid_version(version):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((version, e.stat()))
        return found

    def _current_version(self, task: str, st: os.stat_result) -> str | None:
        cached = self._load_versions().get(f"{task}{SUFFIX}")
        if cached and Stamp.of(st).matches(cached):
            version = cached.get("version")
            if isinstance(version, str):
                return version
        try:
            return version_of(self.read(task))
        except FileNotFoundError:
            return None

    def _remove_history(self, task: str) -> None:
        folder = self.root / HISTORY / task
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)

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

    def folder_stamp(self) -> Stamp:
        """The stamp of the store directory: its mtime changes whenever an entry is added, removed or renamed."""
        return Stamp.of(os.stat(self.root))

    def stamp(self, task: str) -> Stamp | None:
        """The stamp of ``task``'s file (``None`` when there is none)."""
        try:
            return Stamp.of(os.stat(self.root / f"{task}{SUFFIX}"))
        except FileNotFoundError:
            return None

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
            AdapterFormatError: not a complete adapter file (the checks of ``adaptformer.adapter_header``).
        """
        path = self.path(task)
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            stamp = Stamp.of(st)
            size = st.st_size
            header = read_header(f, path.name)
            if cached and stamp.matches(cached) and (isinstance(cached.get("version"), str)):
                version = cached["version"]
            else:
                f.seek(0)
                version = version_of(f.read())
        return StoredFile(task=task, version=version, size=size, header=header, stamp=stamp)

    def scan(self) -> list[StoredFile]:
        """Every readable, complete adapter file, sorted by task; broken ones are quarantined, others skipped."""
        return self.scan_stamped()[0]

    def scan_stamped(self) -> tuple[list[StoredFile], dict[str, Stamp]]:
        """:meth:`scan`, and the stamp of every file it looked at, readable or not (a watcher's starting point).

        A file that can never be read (:func:`quarantinable`) is moved to ``.quarantine/``; one that may still
        be growing, or that a newer server wrote, is skipped with a warning and left where it is. A file whose
        stamp matches its record in ``.headers.json`` is not opened: its checked header, version and size come
        from the record (a restart with thousands of unchanged adapters lists and stats them, nothing more).
        """
        headers = self._load_headers()
        cache: dict[str, dict[str, Any]] | None = None  # .versions.json: read only when a file must be opened
        fresh_headers: dict[str, dict[str, Any]] = {}
        found: list[StoredFile] = []
        seen: dict[str, Stamp] = {}
        with os.scandir(self.root) as it:
            entries = sorted((e for e in it if e.name.endswith(SUFFIX) and not e.name.startswith(".")), key=_name)
        for e in entries:
            task = e.name[: -len(SUFFIX)]
            if not valid_task_name(task):
                log.warning("skipping %s: %r is not a valid task name", e.name, task)
                continue
            try:
                if not e.is_file():
                    continue
                seen[task] = Stamp.of(e.stat())
                record: Any = headers.get(e.name)  # a dict when _from_record accepts it
                f = _from_record(task, seen[task], record)
                if f is None:
                    if cache is None:
                        cache = self._load_versions()
                    f = self.examine(task, cache.get(e.name))
                    record = _record(f)
            except FileNotFoundError:
                seen.pop(task, None)
                continue
            except (OSError, AdapterFormatError) as err:
                if self.refuse(task, seen.get(task), err):
                    del seen[task]
                continue
            except Exception as err:  # a bug in the checks must not stop the server: report it, keep the file
                log.error("skipping %s: cannot examine it (a bug): %r", e.name, err, exc_info=True)
                continue
            assert f.stamp is not None
            seen[task] = f.stamp
            fresh_headers[e.name] = record
            found.append(f)
        if fresh_headers != headers:  # (unchanged records are the same objects: compared by identity)
            fresh = {
                name: {k: r[k] for k in ("size", "mtime_ns", "ino", "version")} for name, r in fresh_headers.items()
            }
            if fresh != (self._load_versions() if cache is None else cache):
                self._save(_VERSIONS, fresh)
            self._save(_HEADERS, {"format": _headers_format(), "files": fresh_headers})
        return found, seen

    def _save(self, name: str, data: dict[str, Any]) -> None:
        try:
            _atomic_write(self.root / name, json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
        except OSError as e:
            log.warning("cannot write the cache %s: %s", name, e)

    def _load_headers(self) -> dict[str, dict[str, Any]]:
        """The records of ``.headers.json`` (empty when absent, unreadable, or written by another version)."""
        try:
            data = json.loads((self.root / _HEADERS).read_bytes())
        except (OSError, ValueError):
            return {}
        if (
            not isinstance(data, dict)
            or data.get("format") != _headers_format()
            or not isinstance(data.get("files"), dict)
        ):
            return {}
        return data["files"]

    def refuse(self, task: str, stamp: Stamp | None, error: BaseException) -> bool:
        """Reports a file that cannot be served; quarantines it when it is broken for good. True when moved."""
        moved = quarantinable(error) and stamp is not None and self.quarantine(task, stamp, str(error))
        if not moved:
            log.warning("skipping %s%s: %s", task, SUFFIX, error)
        return moved

    def quarantine(self, task: str, stamp: Stamp, reason: str) -> bool:
        """Moves ``<task>.safetensors`` to ``.quarantine/<task>.<time>.safetensors`` with a ``.reason`` note.

        Only the file that was examined is moved: when the name holds another file by now (a replica replaced
        it), nothing is. Returns whether the file was moved.
        """
        path = self.path(task)
        folder = self.root / QUARANTINE
        try:
            if Stamp.of(path.stat()) != stamp:
                return False
            folder.mkdir(exist_ok=True)
            moved = folder / f"{task}.{time.strftime('%Y%m%dT%H%M%S')}-{stamp.ino}{SUFFIX}"
            os.replace(path, moved)
        except FileNotFoundError:
            return False  # gone meanwhile (deleted, or quarantined by another server)
        except OSError as e:
            log.warning("cannot move %s%s to %s/: %s", task, SUFFIX, QUARANTINE, e)
            return False
        with contextlib.suppress(OSError):  # the move is what matters; the note and the fsync are a courtesy
            moved.with_suffix(".reason").write_text(reason[:4000] + "\n")
            _fsync_dir(self.root)
        log.warning("skipping %s%s: %s (quarantined: moved to %s/%s)", task, SUFFIX, reason, QUARANTINE, moved.name)
        if self._on_quarantine is not None:
            self._on_quarantine(task)
        return True

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
                meta = read_header(src, src.name).meta
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

    A poll costs what changed, not what exists. It first stats the store directory: every write of a server
    (temp file and rename), every delete and every file copied in adds, removes or renames a directory entry,
    which changes the directory's mtime. While that stamp stays the same, a poll stats only the files that may
    still be changing in place (a ``cp`` into the store still running: files modified within the last
    ``RACY_S`` seconds or incomplete), nothing else. When it changed, the poll lists the directory and stats each
    file; only files whose stamp (size, mtime, inode) changed are opened, their header parsed and their bytes
    hashed. A stamp is trusted only once its mtime is ``RACY_S`` old (two changes within one tick of a coarse
    filesystem clock leave the same mtime), and a full listing runs every ``rescan_s`` whatever the directory
    says: a file overwritten in place by hand (``cp new.safetensors store/old.safetensors`` changes no
    directory entry) is seen within that period. Polling, unlike inotify, also works on network filesystems and
    container volumes shared by several hosts.

    Args:
        store: The store.
        check: Raises ``AdapterFormatError`` or ``IncompatibleAdapterError`` for a file this server cannot serve.
        seen: The stamps of the files already accounted for (``AdapterStore.scan_stamped``).
        rescan_s: Seconds between full listings when the directory looks unchanged.

    Attributes:
        listings: Full listings so far (directory listed, every file stat'ed).
    """

    def __init__(
        self,
        store: AdapterStore,
        check: Callable[[StoredFile], None],
        seen: dict[str, Stamp],
        rescan_s: float = RESCAN_S,
    ) -> None:
        self.store = store
        self._check = check
        self._seen = dict(seen)
        self._warned: dict[str, Stamp] = {}
        self.rescan_s = rescan_s
        self._folder: Stamp | None = None  # the directory's stamp at the last listing, once old enough to trust
        self._next_listing = 0.0
        self._recent: set[str] = set()  # files stat'ed at every poll: they may still change in place
        self.listings = 0

    def look_at(self, task: str) -> None:
        """Makes the next poll stat ``task``'s file whatever the directory says (a page-in found other bytes
        than the registry expects: e.g. a file overwritten in place, which changes no directory entry)."""
        if valid_task_name(task):
            self._recent.add(task)

    def poll(self) -> dict[str, StoredFile | None]:
        """What changed since the last poll: task -> its file now, or ``None`` when gone or not servable.

        Blocking (run it in a worker thread). A file that is still being written by hand (shorter than its
        header says) is reported as ``None`` and looked at again on the next poll.
        """
        wall = time.time_ns()
        folder = self.store.folder_stamp()
        if folder != self._folder or time.monotonic() >= self._next_listing:
            now = self.store.stamps()
            gone = self._seen.keys() - now.keys()
            self._folder = folder if wall - folder.mtime_ns > RACY_S * 1e9 else None
            self._next_listing = time.monotonic() + self.rescan_s
            self.listings += 1
        else:
            now = {t: st for t in self._recent if (st := self.store.stamp(t)) is not None}
            gone = (self._recent - now.keys()) & self._seen.keys()
        self._recent = {t for t, st in now.items() if wall - st.mtime_ns < RACY_S * 1e9}
        changes: dict[str, StoredFile | None] = {}
        for task in gone:
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
                if self._warned.get(task) != stamp and not self.store.refuse(task, stamp, e):
                    self._warned[task] = stamp
                if isinstance(e, IncompleteFile):
                    self._seen.pop(task, None)  # look again next time: it may still be growing
                    self._recent.add(task)
                else:
                    self._seen[task] = stamp
                changes[task] = None
                continue
            except Exception as e:  # a bug in the checks must not stop the watching: report it, keep the file
                if self._warned.get(task) != stamp:
                    self._warned[task] = stamp
                    log.error("store: cannot examine %s%s (a bug): %r", task, SUFFIX, e, exc_info=True)
                self._seen[task] = stamp
                changes[task] = None
                continue
            assert f.stamp is not None
            self._seen[task] = f.stamp
            self._warned.pop(task, None)
            changes[task] = f
        return changes


@functools.cache
def _headers_format() -> str:
    """Names the header checks: the record format, the adapter format version and a digest of the modules that
    check headers (a server with other checks reads every file again rather than trust these records)."""
    digest = hashlib.sha256()
    for module in (adapter_header, adapter_config, input_spec):  # parse_header's checks live in these three
        digest.update(Path(module.__file__ or "").read_bytes())
    return f"1/{adapter_header.FORMAT_VERSION}/{digest.hexdigest()[:12]}"


def _name(e: os.DirEntry) -> str:
    return e.name


def _record(f: StoredFile) -> dict[str, Any]:
    """The ``.headers.json`` record of a file that passed the checks."""
    assert f.stamp is not None
    h, st = f.header, f.stamp
    header = {"meta": h.meta, "shapes": {k: list(v) for k, v in h.shapes.items()}, "data_end": h.data_end}
    return {"size": st.size, "mtime_ns": st.mtime_ns, "ino": st.ino, "version": f.version, "header": header}


def _from_record(task: str, stamp: Stamp, record: Any) -> StoredFile | None:
    """The file a ``.headers.json`` record describes, when the record is for exactly this stamp; else ``None``."""
    if not stamp.matches(record):
        return None
    try:
        h, version = record["header"], record["version"]
        header = Header(
            meta=dict(h["meta"]), shapes={k: tuple(v) for k, v in h["shapes"].items()}, data_end=int(h["data_end"])
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(version, str) or not valid_version(version) or header.data_end != stamp.size:
        return None
    return StoredFile(task=task, version=version, size=stamp.size, header=header, stamp=stamp)


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
