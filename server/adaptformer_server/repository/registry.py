"""The registry: task name -> current entry, and the entries of kept versions that requests pinned. Rebuilt from
the store at start."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterator

from adaptformer_server.repository.record import AdapterEntry

__all__ = ["MAX_PAGE", "Registry", "decode_cursor", "encode_cursor"]

MAX_PAGE = 1000  # the largest page of GET /adapters (about 500 kB of JSON)
MAX_PINNED = 1024  # entries of pinned (non-current) versions kept in memory


class Registry:
    """The current entry of every task, and the last pinned kept versions. Used from the event loop only, so no
    lock is needed."""

    def __init__(self) -> None:
        self._entries: dict[str, AdapterEntry] = {}
        self._pinned: OrderedDict[str, AdapterEntry] = OrderedDict()  # task@version -> entry of a kept version
        self._names: list[str] | None = []  # the task names, sorted; None: to be sorted again (a task came or went)
        # Called after every change (the engine process tells its fronts through it: tier.shared.EngineState.bump).
        self.on_change: Callable[[], None] | None = None

    def get(self, task: str) -> AdapterEntry | None:
        return self._entries.get(task)

    def put(self, entry: AdapterEntry) -> AdapterEntry | None:
        """Makes ``entry`` the current version of its task; returns the one it replaces."""
        previous = self._entries.get(entry.task)
        self._entries[entry.task] = entry
        if previous is None:
            self._names = None
        if self.on_change is not None:
            self.on_change()
        return previous

    def remove(self, task: str) -> AdapterEntry | None:
        removed = self._entries.pop(task, None)
        if removed is not None:
            self._names = None
            if self.on_change is not None:
                self.on_change()
        return removed

    def pinned(self, key: str) -> AdapterEntry | None:
        """The entry of a kept version (``task@version``) a request named before, the most recent kept."""
        entry = self._pinned.get(key)
        if entry is not None:
            self._pinned.move_to_end(key)
        return entry

    def pin(self, entry: AdapterEntry) -> None:
        """Remembers the entry of a kept, non-current version (its header was read and checked)."""
        self._pinned[entry.key] = entry
        while len(self._pinned) > MAX_PINNED:
            self._pinned.popitem(last=False)

    def unpin(self, key: str) -> None:
        self._pinned.pop(key, None)

    def is_pinned(self, entry: AdapterEntry) -> bool:
        """Whether ``entry`` is the remembered entry of its pinned version (not only one with the same key)."""
        return self._pinned.get(entry.key) is entry

    def wanted(self, entry: AdapterEntry) -> bool:
        """Whether ``entry`` is still worth a resident slot: its task's current version, or a pinned version."""
        return self.current_version(entry.task) == entry.version or entry.key in self._pinned

    def current_version(self, task: str) -> str | None:
        entry = self._entries.get(task)
        return entry.version if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter([self._entries[name] for name in self.names()])

    def names(self) -> list[str]:
        """Every task name, sorted (sorted once after tasks came or went, not at every call)."""
        if self._names is None:
            self._names = sorted(self._entries)
        return self._names

    def page(
        self, after: str | None = None, limit: int | None = None, prefix: str = "", modality: str | None = None
    ) -> tuple[list[AdapterEntry], str | None]:
        """One page of the entries in task-name order, and the task to continue after (``None``: no more).

        A walk that passes each page's last task as the next ``after`` returns every task that exists throughout
        the walk exactly once, whatever is added or removed meanwhile (a task added or removed during the walk
        appears at most once). The cost is that of the page (and of the entries the filters skip), not of the
        registry.

        Args:
            after: Only tasks whose names sort after this one (the previous page's last task).
            limit: At most this many entries (``None``: all that match).
            prefix: Only tasks whose name starts with it.
            modality: Only tasks of this modality (``image`` or ``clip``).
        """
        names = self.names()
        i = bisect.bisect_left(names, prefix)
        if after is not None:
            i = max(i, bisect.bisect_right(names, after))
        found: list[AdapterEntry] = []
        for name in names[i:]:
            if not name.startswith(prefix):
                break
            entry = self._entries[name]
            if modality is not None and entry.spec.modality != modality:
                continue
            if limit is not None and len(found) == limit:
                return found, found[-1].task  # one more matches: the caller asks again
            found.append(entry)
        return found, None


def encode_cursor(task: str | None) -> str | None:
    """The opaque ``next_cursor`` of a page that ends with ``task`` (``None``: the last page)."""
    return None if task is None else base64.urlsafe_b64encode(f"after:{task}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The task a ``cursor`` continues after.

    Raises:
        ValueError: not a cursor a listing gave out.
    """
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error):
        text = ""
    if not text.startswith("after:") or not text[6:]:
        raise ValueError(
            f"cursor {cursor[:80]!r} is not one this server gave out: pass the next_cursor of the previous page "
            "unchanged, or leave cursor out to start from the first task"
        )
    return text[6:]
