"""Noticing what other processes did to a shared store: files added, replaced or removed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from adaptformer.safetensors_header import IncompleteFile
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import SUFFIX, valid_task_name
from adaptformer_server.repository.record import AdapterEntry, Stamp

__all__ = ["RACY_S", "RESCAN_S", "StoreWatcher"]

log = logging.getLogger("adaptformer_server.store")

RESCAN_S = 60.0  # the watcher lists the whole store at least this often (a file overwritten in place by hand)
RACY_S = 2.0  # a file or directory modified less long ago may change again without its mtime changing


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
        check: Callable[[AdapterEntry], None],
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

    def poll(self) -> dict[str, AdapterEntry | None]:
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
        changes: dict[str, AdapterEntry | None] = {}
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
