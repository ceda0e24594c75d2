"""The adapters resident on the device, at most ``slots`` of them; the rest are paged in on demand (LRU).

(The engine's branch bank, ``adaptformer.gathered.BranchBank``, is another thing: the stacked device weights of the
tasks a batch runs.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from adaptformer.task import TaskAdapter
from adaptformer_server.metrics import Metrics
from adaptformer_server.repository.record import AdapterEntry

__all__ = ["ResidentAdapters", "StaleVersion"]

log = logging.getLogger("adaptformer_server.resident")


class StaleVersion(Exception):
    """The file on disk is no longer the version asked for (replaced or deleted meanwhile)."""


class ResidentAdapters:
    """Resident adapters by ``task@version``, least recently used out.

    A request keeps a reference to the TaskAdapter it was given, so evicting or replacing a version never
    affects a request in flight; the slot count bounds what is resident, not what running batches hold.

    Args:
        slots: Most adapters kept resident.
        load: Reads, checks and places one entry's adapter (blocking: it runs in a worker thread).
        metrics: Page-in, eviction and residency metrics.
        keep: Whether a paged-in entry is still worth a slot (the task's current version, or a kept version a
            request pinned); a stale page-in is not kept.
    """

    def __init__(
        self,
        slots: int,
        load: Callable[[AdapterEntry], TaskAdapter],
        metrics: Metrics,
        keep: Callable[[AdapterEntry], bool],
    ) -> None:
        self.slots = slots
        self._load = load
        self._metrics = metrics
        self._keep = keep
        self._resident: OrderedDict[str, TaskAdapter] = OrderedDict()
        self._loading: dict[str, asyncio.Task[TaskAdapter]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._resident

    def __len__(self) -> int:
        return len(self._resident)

    def resident_tasks(self) -> set[str]:
        """The tasks with some version paged in (keys are ``task@version``); a copy, safe from any thread."""
        return {key.rpartition("@")[0] for key in list(self._resident)}

    async def get(self, entry: AdapterEntry) -> TaskAdapter:
        """The adapter of ``entry``, paged in when not resident (one page-in per key however many ask).

        Raises:
            StaleVersion: the store no longer holds this version.
            AdapterFormatError, IncompatibleAdapterError: the stored file cannot be served.
        """
        key = entry.key
        task = self._resident.get(key)
        if task is not None:
            self._resident.move_to_end(key)
            return task
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._page_in(entry))
            self._loading[key] = pending
        # shield: a client that goes away must not cancel a page-in other requests wait for
        return await asyncio.shield(pending)

    async def _page_in(self, entry: AdapterEntry) -> TaskAdapter:
        start = time.perf_counter()
        try:
            task = await asyncio.to_thread(self._load, entry)
        except Exception:
            self._metrics.page_in_failures.inc()
            raise
        finally:
            self._loading.pop(entry.key, None)
        self._metrics.page_ins.inc()
        self._metrics.page_in_latency.observe(time.perf_counter() - start)
        if self._keep(entry):
            self.put(entry, task)
        return task

    def put(self, entry: AdapterEntry, task: TaskAdapter) -> None:
        """Makes ``task`` resident (an upload places its adapter directly), evicting the least recently used."""
        self._resident[entry.key] = task
        self._resident.move_to_end(entry.key)
        while len(self._resident) > self.slots:
            key, _ = self._resident.popitem(last=False)
            self._metrics.evictions.inc()
            log.debug("evicted %s", key)
        self._metrics.resident.set(len(self._resident))

    def drop(self, task: str) -> None:
        """Forgets every resident version of ``task`` (after a replace or delete)."""
        for key in [k for k in self._resident if k.rpartition("@")[0] == task]:
            del self._resident[key]
        self._metrics.resident.set(len(self._resident))

    def discard(self, key: str) -> None:
        """Forgets one resident ``task@version``."""
        self._resident.pop(key, None)
        self._metrics.resident.set(len(self._resident))
