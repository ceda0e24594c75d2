"""The store directory: ``<task>.safetensors`` files, the source of truth of the registry, and the kept history.

Writes are atomic (temp file, fsync, rename). ``<task>.safetensors`` is always the current version (what start-up,
the watcher and older servers read). The versions kept for pinning and rollback are copies under
``.history/<task>/<version>.safetensors``, named by their content (a file whose bytes do not hash to its name is
never served). Every step is one atomic rename: an upload first keeps the version it replaces and the new one in
the history, then replaces the current file; a rollback replaces the current file with a history copy. A crash
between two steps leaves at worst an extra history copy (listed, not current), never a current file that is not a
complete version.

Several server processes may share one store: each watches it (:mod:`.watcher`) and picks up the others'
uploads, rollbacks and deletes. Start-up reads the headers only, and of unchanged files not even those
(:mod:`.index`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptformer.adapter_header import read_header
from adaptformer.errors import AdapterFormatError
from adaptformer_server.repository.files import atomic_write, fsync_dir, orphan
from adaptformer_server.repository.index import StoreIndex
from adaptformer_server.repository.names import SUFFIX, valid_task_name, valid_version, version_of
from adaptformer_server.repository.quarantine import Quarantine, quarantinable
from adaptformer_server.repository.record import AdapterEntry, Stamp

__all__ = ["HISTORY", "TEMP_MAX_AGE_S", "AdapterStore"]

log = logging.getLogger("adaptformer_server.store")

HISTORY = ".history"  # .history/<task>/<version>.safetensors: the versions kept for pinning and rollback
TEMP_MAX_AGE_S = 300.0  # a younger temp file of another host may be a write in progress there


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
        self.keep_versions = max(1, keep_versions)
        self.index = StoreIndex(self.root)
        self.quarantined = Quarantine(self.root, on_quarantine)

    def path(self, task: str) -> Path:
        if not valid_task_name(task):
            raise ValueError(f"invalid task name {task!r}")
        return self.root / f"{task}{SUFFIX}"

    def read(self, task: str) -> bytes:
        return self.path(task).read_bytes()

    def write(self, task: str, data: bytes, version: str | None = None) -> None:
        """Makes ``data`` the current version of ``task``, keeping the version it replaces.

        Three atomic steps, each safe to crash after: (1) the version being replaced is copied into the history
        when it is not there yet (a file copied in by hand); (2) the new version is written into the history;
        (3) the current file is replaced. Then versions beyond ``keep_versions`` are removed.

        Args:
            version: ``version_of(data)`` when the caller has it (an upload is hashed once).
        """
        path = self.path(task)
        self._keep_current(task)
        self._keep(task, version or version_of(data), data)
        atomic_write(path, data)
        self.prune(task)

    def delete(self, task: str) -> bool:
        """Removes the current file, then the task's history (a crash between leaves an orphan history, which
        :meth:`clean_history` removes)."""
        try:
            self.path(task).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.root)
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
            FileNotFoundError: the store does not hold that version (never kept, or removed since: another server
                may prune it at any moment); also when a history copy's bytes do not hash to its name (damaged:
                it is quarantined).
        """
        with contextlib.suppress(FileNotFoundError):
            data = self.read(task)
            if version_of(data) == version:
                return data
        path = self.version_path(task, version)
        data = path.read_bytes()
        if version_of(data) != version:
            self.quarantined.move(path, task, f"{task}@{version}", "its bytes do not hash to the version in its name")
            raise FileNotFoundError(str(path))
        return data

    def current_version(self, task: str) -> str | None:
        """The version of ``task``'s current file (from the index when its stamp matches), ``None`` when none."""
        try:
            stamp = Stamp.of(self.path(task).stat())
            return self.index.version(f"{task}{SUFFIX}", stamp) or version_of(self.read(task))
        except FileNotFoundError:
            return None

    def versions(self, task: str) -> list[AdapterEntry]:
        """The kept versions of ``task`` with their checked headers, newest first (the current one listed even
        when it has no history copy, e.g. a file copied in by hand). Empty when the task has no current file.

        A kept copy whose header cannot be read is left out with a warning (one that can never be read is
        quarantined); one removed meanwhile (pruned by another server) is left out.
        """
        current = self.current_version(task)
        if current is None:
            return []
        found: dict[str, AdapterEntry] = {}
        for v, st in self._history(task):
            if (entry := self._read_entry(task, v, self.version_path(task, v), st.st_mtime_ns)) is not None:
                found[v] = entry
        if current not in found:
            with contextlib.suppress(FileNotFoundError):
                mtime = self.path(task).stat().st_mtime_ns
                if (entry := self._read_entry(task, current, self.path(task), mtime)) is not None:
                    found[current] = entry
        return sorted(found.values(), key=lambda e: (e.stored_ns, e.version), reverse=True)

    def _read_entry(self, task: str, version: str, path: Path, stored_ns: int) -> AdapterEntry | None:
        try:
            with path.open("rb") as f:
                stamp = Stamp.of(os.fstat(f.fileno()))
                header = read_header(f, f"{task}@{version}{SUFFIX}")
        except FileNotFoundError:
            return None
        except (OSError, AdapterFormatError) as e:
            if not (
                quarantinable(e)
                and path.parent != self.root
                and self.quarantined.move(path, task, f"{task}@{version}", str(e))
            ):
                log.warning("version %s of %s: cannot read its header: %s", version, task, e)
            return None
        return AdapterEntry(task, version, stamp.size, header, stamp=stamp, stored_ns=stored_ns)

    def promote(self, task: str, version: str) -> bytes:
        """Makes a kept version current again (one atomic replace of the current file); returns its bytes.

        Raises:
            FileNotFoundError: the store does not hold that version (or no longer: pruned meanwhile).
        """
        data = self.read_version(task, version)
        self._keep_current(task)
        atomic_write(self.path(task), data)
        self.prune(task)
        return data

    def prune(self, task: str) -> list[str]:
        """Removes history copies beyond ``keep_versions``: the current version and the newest others stay."""
        current = self.current_version(task)
        kept = sorted(self._history(task), key=lambda h: (h[1].st_mtime_ns, h[0]), reverse=True)
        others = [v for v, _ in kept if v != current]
        removed = []
        for v in others[max(0, self.keep_versions - (current is not None)) :]:
            with contextlib.suppress(FileNotFoundError):
                self.version_path(task, v).unlink()
                removed.append(v)
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
                    if orphan(tmp.name) or now - tmp.stat().st_mtime >= min_age_s:
                        tmp.unlink()
            if not valid_task_name(d.name) or self.path(d.name).exists():
                continue
            with contextlib.suppress(OSError):
                if all(now - p.stat().st_mtime >= min_age_s or orphan(p.name) for p in d.iterdir()):
                    self._remove_history(d.name)
                    removed += 1
                    log.warning("removed the history of %s: the task has no current file", d.name)
        return removed

    def _keep_current(self, task: str) -> None:
        """Copies the current file into the history when it is not there yet (a file copied in by hand): read
        once, hashed only when the index does not know its stamp."""
        with contextlib.suppress(FileNotFoundError), self.path(task).open("rb") as f:
            stamp = Stamp.of(os.fstat(f.fileno()))
            version = self.index.version(f"{task}{SUFFIX}", stamp)
            if version is not None and self.has_version(task, version):
                return
            old = f.read()
            version = version or version_of(old)
            if not self.has_version(task, version):
                self._keep(task, version, old, stamp.mtime_ns)

    def _keep(self, task: str, version: str, data: bytes, mtime_ns: int | None = None) -> None:
        """Puts one version into the history (a version kept already only becomes the newest again)."""
        path = self.version_path(task, version)
        if path.is_file() and path.stat().st_size == len(data):
            os.utime(path)
        else:
            atomic_write(path, data)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))

    def _history(self, task: str) -> list[tuple[str, os.stat_result]]:
        found = []
        try:
            entries = list(os.scandir(self.root / HISTORY / task))
        except FileNotFoundError:
            return []
        for e in entries:
            version = e.name[: -len(SUFFIX)]
            if not e.name.endswith(SUFFIX) or not valid_version(version):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((version, e.stat()))
        return found

    def _remove_history(self, task: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / HISTORY / task)

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
                if not orphan(p.name) and now - p.stat().st_mtime < min_age_s:
                    continue
                p.unlink()
                removed += 1
                log.warning("removed leftover temp file %s (an interrupted write)", p.name)
            except FileNotFoundError:
                continue  # finished (renamed) or removed by another process meanwhile
            except OSError as e:
                log.warning("cannot remove leftover temp file %s: %s", p.name, e)
        return removed

    # -- current files ----------------------------------------------------------------------------------------
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

    def examine(self, task: str, cached: dict[str, Any] | None = None) -> AdapterEntry:
        """Reads one file's header and version from a single open file (its stamp is that file's).

        Args:
            task: The task name.
            cached: An index record (size, mtime_ns, ino, version); its version is used when the stamp matches.

        Raises:
            FileNotFoundError: no such file (any more).
            AdapterFormatError: not a complete adapter file (the checks of ``adaptformer.adapter_header``).
        """
        path = self.path(task)
        with path.open("rb") as f:
            stamp = Stamp.of(os.fstat(f.fileno()))
            header = read_header(f, path.name)
            version = cached.get("version") if cached and stamp.matches(cached) else None
            if not isinstance(version, str):
                f.seek(0)
                version = version_of(f.read())
        return AdapterEntry(task=task, version=version, size_bytes=stamp.size, header=header, stamp=stamp)

    def scan(self) -> list[AdapterEntry]:
        """Every readable, complete adapter file, sorted by task; broken ones are quarantined, others skipped."""
        return self.scan_stamped()[0]

    def scan_stamped(self) -> tuple[list[AdapterEntry], dict[str, Stamp]]:
        """:meth:`scan`, and the stamp of every file it looked at, readable or not (a watcher's starting point).

        A file that can never be read (:func:`.quarantinable`) is moved to ``.quarantine/``; one that may still
        be growing, or that a newer server wrote, is skipped with a warning and left where it is. A file whose
        stamp matches its index record is not opened: its checked header, version and size come from the record
        (a restart with thousands of unchanged adapters lists and stats them, nothing more).
        """
        records = self.index.load()
        fresh: dict[str, dict[str, Any]] = {}
        found: list[AdapterEntry] = []
        seen: dict[str, Stamp] = {}
        with os.scandir(self.root) as it:
            entries = sorted((e for e in it if e.name.endswith(SUFFIX) and not e.name.startswith(".")), key=_name)
        for e in entries:
            name, task = e.name, e.name[: -len(SUFFIX)]
            if not valid_task_name(task):
                log.warning("skipping %s: %r is not a valid task name", name, task)
                continue
            try:
                if not e.is_file():
                    continue
                seen[task] = Stamp.of(e.stat())
                record: Any = records.get(name)
                entry = AdapterEntry.from_record(task, seen[task], record)
                if entry is None:
                    entry = self.examine(task, record)
                    record = entry.to_record()
            except FileNotFoundError:
                seen.pop(task, None)
                continue
            except (OSError, AdapterFormatError) as err:
                if self.refuse(task, seen.get(task), err):
                    del seen[task]
                continue
            except Exception as err:  # a bug in the checks must not stop the server: report it, keep the file
                log.error("skipping %s: cannot examine it (a bug): %r", name, err, exc_info=True)
                continue
            assert entry.stamp is not None
            seen[task] = entry.stamp
            fresh[name] = record
            found.append(entry)
        if fresh != records:  # (unchanged records are the same objects)
            self.index.save(fresh)
        return found, seen

    def refuse(self, task: str, stamp: Stamp | None, error: BaseException) -> bool:
        """Reports a file that cannot be served; quarantines it when it is broken for good. True when moved."""
        moved = quarantinable(error) and stamp is not None and self.quarantine(task, stamp, str(error))
        if not moved:
            log.warning("skipping %s%s: %s", task, SUFFIX, error)
        return moved

    def quarantine(self, task: str, stamp: Stamp, reason: str) -> bool:
        """Moves ``<task>.safetensors`` to ``.quarantine/`` when it is still the file with ``stamp``."""
        return self.quarantined.move(self.path(task), task, task, reason, stamp)


def _name(e: os.DirEntry) -> str:
    return e.name
