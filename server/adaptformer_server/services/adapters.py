"""The adapter manager: the one owner of a server's adapter state (the repository's store, registry, resident
adapters and store watcher, :mod:`adaptformer_server.repository`).

Every change to the adapters a server serves goes through it: uploads, registrations by reference, deletes,
rollbacks, the watcher's syncs with the shared store, and the page-ins of resident adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptformer.adapter_file import task_from_bytes
from adaptformer.adapter_header import parse_header, read_header
from adaptformer.embedded import EMBEDDED_NAME
from adaptformer.engine import MultiTaskViT
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer.task import TaskAdapter
from adaptformer_server.backbone import BackboneInfo
from adaptformer_server.errors import Conflict, IncompatibleAdapter, InvalidAdapter, InvalidInput, NotFound, NotReady
from adaptformer_server.metrics import Metrics
from adaptformer_server.repository import names
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.record import AdapterEntry, Stamp
from adaptformer_server.repository.registry import Registry
from adaptformer_server.repository.resident import ResidentAdapters, StaleVersion
from adaptformer_server.repository.seed import demo_files, seed
from adaptformer_server.repository.split import Split, SplitStore, check_split, current_caller
from adaptformer_server.repository.watcher import StoreWatcher
from adaptformer_server.settings import Settings

__all__ = ["AdapterManager", "Replacement"]

log = logging.getLogger("adaptformer_server")


@dataclass(frozen=True)
class Replacement:
    """What an upload or a rollback made current, and the entry it replaced (``None``: a new task)."""

    entry: AdapterEntry
    previous: AdapterEntry | None


class AdapterManager:
    """Owns the store, the registry, the resident adapters and the store watcher; routes reach it as the
    ``Adapters`` dependency once the server is ready.

    Args:
        settings: Server settings (store, slots, versions kept, watcher period).
        metrics: The app's metrics.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = Registry()
        self.store: AdapterStore | None = None
        self.resident_adapters: ResidentAdapters | None = None
        self.watcher: StoreWatcher | None = None
        self.engine: MultiTaskViT | None = None
        self.backbone: BackboneInfo | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.split_store: SplitStore | None = None
        self.splits: dict[str, Split] = {}  # task -> its traffic split (the store's .splits/)
        self._background: set[asyncio.Task] = set()
        # Serialises this process's uploads, deletes and store syncs (other processes write the store too: the
        # watcher brings their changes in; the files themselves are replaced atomically).
        self._write_lock = asyncio.Lock()

    # -- life cycle -------------------------------------------------------------------------------------------
    async def open(self, engine: MultiTaskViT, backbone: BackboneInfo) -> None:
        """Opens the store (cleaned, seeded, scanned and fit-checked), fills the registry and sets up the resident adapters."""
        self.engine, self.backbone = engine, backbone
        store = self.store = await asyncio.to_thread(
            AdapterStore, self.settings.store, self._quarantined, self.settings.keep_versions
        )
        files, seen = await asyncio.to_thread(self._prepare_store, store, backbone)
        for entry in files:
            self.registry.put(entry)
        self.watcher = StoreWatcher(store, self._check_stored, seen)
        self.split_store = SplitStore(store.root)
        found: dict[str, Split] | None = await asyncio.to_thread(self.split_store.poll)
        self.splits = found or {}
        self.metrics.version_label = self._version_label
        self.metrics.registered.set(len(self.registry))
        self.resident_adapters = ResidentAdapters(
            self.settings.slots, self._page_in, self.metrics, self.registry.wanted
        )

    def watch(self) -> None:
        """Starts polling the store every ``store_poll_ms`` (nothing when it is 0)."""
        if self.settings.store_poll_ms > 0 and self._watch_task is None:
            period = self.settings.store_poll_ms / 1000
            self._watch_task = asyncio.create_task(self._watch(period), name="adaptformer-watch")

    async def close(self) -> None:
        """Stops the watcher and the prefetches in the background."""
        for task in [self._watch_task, *self._background]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _prepare_store(self, store: AdapterStore, info: BackboneInfo) -> tuple[list[AdapterEntry], dict[str, Stamp]]:
        store.clean_temp_files()
        store.clean_history()
        if self.settings.seed_demo and self.settings.backbone in ("embedded", EMBEDDED_NAME):
            seed(store, info.fingerprint, demo_files())
        files = []
        found, seen = store.scan_stamped()  # the checks of parse_header; broken files are quarantined
        for f in found:
            try:
                self._check_stored(f)
            except (IncompatibleAdapterError, AdapterFormatError) as e:  # e.g. another backbone's: left in place
                log.warning("skipping %s.safetensors: %s", f.task, e)
                continue
            files.append(f)
        return files, seen

    def _check_stored(self, f: AdapterEntry) -> None:
        """The fit check of start-up, of the store watcher and of every upload."""
        assert self.backbone is not None
        self.backbone.check_header(f.header, f"{f.task}.safetensors")

    def _quarantined(self, task: str) -> None:
        self.metrics.quarantined.inc()

    # -- the shared store -----------------------------------------------------------------------------------
    async def _watch(self, period: float) -> None:
        """Polls the store for changes made by other processes (other replicas, a hand copy) until stopped."""
        failing = False
        while True:
            await asyncio.sleep(period)
            try:
                await self.sync_store()
                if failing:
                    log.info("the store %s is readable again", self.settings.store)
                failing = False
            except Exception as e:  # a vanished network mount must not stop the watching for good
                if not failing:
                    log.warning("cannot read the store %s: %s (retrying every %.1f s)", self.settings.store, e, period)
                failing = True

    async def sync_store(self) -> int:
        """Brings the registry in line with the store now (the watcher does this every ``store_poll_ms``).

        Returns:
            The number of tasks added, replaced or removed.
        """
        async with self._write_lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> int:
        if self.watcher is None or self.resident_adapters is None:
            return 0
        applied = self._apply(await asyncio.to_thread(self.watcher.poll))
        splits = await asyncio.to_thread(self.split_store.poll) if self.split_store is not None else None
        if splits is not None and splits != self.splits:
            self.splits = splits
            self._changed()
        return applied

    def _changed(self) -> None:
        if self.registry.on_change is not None:  # the engine process tells its fronts
            self.registry.on_change()

    def _apply(self, changes: dict[str, AdapterEntry | None]) -> int:
        assert self.resident_adapters is not None
        applied = 0
        for task, f in sorted(changes.items()):
            current = self.registry.get(task)
            if f is None:
                if current is None:
                    continue
                self.registry.remove(task)
                self.resident_adapters.drop(task)
                self.metrics.store_changes.labels("removed").inc()
                log.info("adapter %s version %s left the store", task, current.version)
            else:
                if current is not None and current.version == f.version:
                    continue  # e.g. this process's own upload
                entry = f
                was_resident = current is not None and current.key in self.resident_adapters
                self.registry.put(entry)
                self.resident_adapters.drop(task)
                kind = "replaced" if current is not None else "added"
                self.metrics.store_changes.labels(kind).inc()
                log.info(
                    "adapter %s version %s %s in the store%s",
                    task,
                    entry.version,
                    kind,
                    f" (was {current.version})" if current is not None else "",
                )
                if was_resident:  # a task in use stays hot: page the new version in now, not on a request
                    self._in_background(self._prefetch(entry))
            applied += 1
        self.metrics.registered.set(len(self.registry))
        return applied

    async def _prefetch(self, entry: AdapterEntry) -> None:
        assert self.resident_adapters is not None
        try:
            await self.resident_adapters.get(entry)
        except Exception as e:  # reported to the request that needs it; here it is only a warm-up
            log.info("prefetch of %s failed: %s", entry.key, e)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- lookups ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[AdapterEntry]:
        """The current entry of every task, sorted by task."""
        return iter(self.registry)

    def knows(self, task: str) -> bool:
        return self.registry.get(task) is not None

    async def refresh(self, tasks: Sequence[str]) -> None:
        """Nothing: this registry is the one source (a front process's view refreshes from it here)."""

    def page(
        self, after: str | None, limit: int | None, prefix: str = "", modality: str | None = None
    ) -> tuple[list[AdapterEntry], str | None]:
        """One page of the current entries in task-name order (:meth:`Registry.page`)."""
        return self.registry.page(after, limit, prefix, modality)

    def entry(self, task: str) -> AdapterEntry:
        """The current entry of ``task``, or of a kept version for ``task@version``; 404 with a hint when unknown."""
        task, version = names.split_pin(task)
        entry = self.registry.get(task) if names.valid_task_name(task) else None
        if entry is None:
            raise NotFound(f"unknown task {task!r}; GET /adapters lists the tasks this server has")
        if version is None or version == entry.version:
            return entry
        return self._pinned_entry(task, version)

    def _pinned_entry(self, task: str, version: str) -> AdapterEntry:
        """A kept, non-current version: its header read once (the file is named by its content) and checked as
        start-up checks a file; the file itself must still be there."""
        assert self.store is not None
        key = f"{task}@{version}"
        if not names.valid_version(version) or not self.store.has_version(task, version):
            self.registry.unpin(key)
            raise NotFound(
                f"task {task!r} has no version {version!r}; GET /adapters/{task}/versions lists the versions kept"
            )
        entry = self.registry.pinned(key)
        if entry is None:
            path = self.store.version_path(task, version)
            try:
                with path.open("rb") as fh:
                    header = read_header(fh, f"{key}{names.SUFFIX}")
                    stamp = Stamp.of(os.fstat(fh.fileno()))
                entry = AdapterEntry(task=task, version=version, size_bytes=stamp.size, header=header, stamp=stamp)
                self._check_stored(entry)
            except FileNotFoundError:
                raise NotFound(f"task {task!r} has no version {version!r} any more") from None
            except IncompatibleAdapterError as e:
                raise IncompatibleAdapter(f"version {version} of task {task!r}: {e}", check=e.check) from None
            except AdapterFormatError as e:
                raise InvalidAdapter(f"version {version} of task {task!r} cannot be loaded: {e}") from None
            self.registry.pin(entry)
        return entry

    def info(self, entry: AdapterEntry) -> dict:
        """The contract's AdapterInfo of ``entry`` (with whether it is resident on the device)."""
        assert self.resident_adapters is not None and self.backbone is not None
        return entry.info(resident=entry.key in self.resident_adapters, backbone_params=self.backbone.params)

    def resident(self, entry: AdapterEntry) -> bool:
        """Whether ``entry`` is resident on the device now."""
        assert self.resident_adapters is not None
        return entry.key in self.resident_adapters

    # -- page-in ----------------------------------------------------------------------------------------------
    async def resolve(self, task: str) -> tuple[AdapterEntry, TaskAdapter]:
        """Admission: the current version of ``task`` and its adapter object, which the request keeps."""
        assert self.resident_adapters is not None
        chosen = self._choose(task)
        if chosen != task:
            try:
                return await self.resolve(chosen)
            except NotFound:  # the chosen version is no longer kept: the current one answers
                pass
        for _ in range(5):
            entry = self.entry(task)
            try:
                adapter = await self.resident_adapters.get(entry)
            except StaleVersion:
                # replaced or deleted (here or by another process) since it was registered: read the store now
                if self.watcher is not None:
                    self.watcher.look_at(entry.task)
                await self.sync_store()
                continue
            except IncompatibleAdapterError as e:
                raise IncompatibleAdapter(
                    f"the stored adapter of task {task!r} does not fit this backbone: {e}; upload a fitting one "
                    "with POST /adapters or delete the task",
                    check=e.check,
                ) from None
            except AdapterFormatError as e:
                raise InvalidAdapter(
                    f"the stored adapter of task {task!r} cannot be loaded: {e}; upload a valid file with "
                    "POST /adapters or delete the task"
                ) from None
            if (caller := current_caller()) is not None:
                caller.served[entry.task] = entry.version
            return entry, adapter
        raise NotReady(f"task {task!r} is being replaced repeatedly; retry", retry_after=1)

    def _choose(self, task: str) -> str:
        """The name a prediction request runs for ``task``: ``task@version`` when a split chose a version other
        than the current one, else ``task`` (a pinned name, no split, no request being admitted)."""
        split = self.splits.get(task)
        caller = current_caller()
        if split is None or caller is None or caller.named_version or "@" in task:
            return task
        version = caller.pick(split)
        return task if version == self.registry.current_version(task) else f"{task}@{version}"

    def _version_label(self, task: str, version: str) -> bool:
        """Whether ``version`` of ``task`` gets its own metric series: the current one, or one in a split."""
        split = self.splits.get(task)
        return self.registry.current_version(task) == version or (split is not None and version in split.versions)

    def _page_in(self, entry: AdapterEntry) -> TaskAdapter:
        """Reads one version from the store, checks it fully and places it on the device (worker thread)."""
        assert self.store is not None
        try:
            if self.registry.is_pinned(entry):  # a kept version a request named: its copy, hash checked
                data = self.store.read_version(entry.task, entry.version)
            else:  # the current version: the current file, or the registry is behind the store (sync, retry)
                data = self.store.read(entry.task)
                if names.version_of(data) != entry.version:
                    raise StaleVersion(entry.key)
        except FileNotFoundError:
            raise StaleVersion(entry.key) from None
        return self._prepare(task_from_bytes(data, source=f"{entry.task}.safetensors"))

    def _prepare(self, task: TaskAdapter) -> TaskAdapter:
        """Checks a loaded task against the engine and places it on the device in the serving dtype."""
        assert self.engine is not None and self.backbone is not None
        spec = task.info.input
        task = self.engine.prepare(task, self.backbone)  # every fit rule, the frame limit included; device, dtype
        dtype = str(self.backbone.dtype).removeprefix("torch.")
        for name, p in task.state_dict().items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise IncompatibleAdapterError(
                    f"adapter {task.name!r}: tensor {name!r} overflows {dtype}, the dtype this server runs in",
                    check="dtype",
                )
        if spec.modality == "clip":
            try:
                self.engine.video(spec.frames, spec.tubelet)
            except (ValueError, TypeError) as e:
                raise IncompatibleAdapterError(f"adapter {task.name!r}: {e}", check="modality") from None
        return task

    async def load(self, task: str) -> AdapterEntry:
        """Pages ``task`` (or ``task@version``) into a resident slot now (the repository extension's load)."""
        entry, _ = await self.resolve(task)
        return entry

    def unload(self, task: str) -> AdapterEntry:
        """Takes ``task`` (every resident version) or ``task@version`` out of the resident adapters; the store keeps it."""
        assert self.resident_adapters is not None
        entry = self.entry(task)
        if "@" in task:
            self.resident_adapters.discard(entry.key)
        else:
            self.resident_adapters.drop(entry.task)
        return entry

    # -- changes ----------------------------------------------------------------------------------------------
    def _validate_upload(
        self, data: bytes, name: str | None, version: str | None = None
    ) -> tuple[AdapterEntry, TaskAdapter]:
        """Full check of uploaded bytes (worker thread): the header checks and fit check of start-up and the
        watcher, then the tensors, their values in the serving dtype and the engine. Returns the entry (the bytes
        hashed once: ``version`` when the caller knows it) and the adapter, prepared."""
        header = parse_header(data, "uploaded file", size=len(data))
        name = name or header.metadata.task
        if (problem := names.task_name_problem(name)) is not None:
            raise InvalidAdapter(f"{problem}; pass a valid name in the `task` form field")
        entry = AdapterEntry(task=name, version=version or names.version_of(data), size_bytes=len(data), header=header)
        try:
            self._check_stored(entry)
            prepared = self._prepare(task_from_bytes(data, source="uploaded file", header=header))
        except IncompatibleAdapterError as e:
            hint = ""
            if e.check in ("fingerprint", "shapes"):
                hint = "; train the adapter on the backbone this server runs (GET /readyz shows its fingerprint)"
            raise IncompatibleAdapter(f"{e}{hint}", check=e.check) from None
        return entry, prepared

    async def upload(self, data: bytes, name: str | None) -> Replacement:
        """Validates, stores (atomically) and registers an adapter; it is resident and servable on return."""
        assert self.store is not None and self.resident_adapters is not None
        if name is not None and (problem := names.task_name_problem(name)) is not None:
            raise InvalidAdapter(problem)
        entry, prepared = await asyncio.to_thread(self._validate_upload, data, name)
        task, version = entry.task, entry.version
        async with self._write_lock:
            await self._sync_locked()  # the version this replaces may come from another server, moments ago
            await asyncio.to_thread(self.store.write, task, data, version)
            await self._clear_split_locked(task)  # a new version ends a roll-out: it serves every request
            previous = self.registry.put(entry)
            self.resident_adapters.drop(task)
            self.resident_adapters.put(entry, prepared)
            self.metrics.registered.set(len(self.registry))
        log.info("adapter %s version %s stored%s", task, version, f" (replaces {previous.version})" if previous else "")
        return Replacement(entry=entry, previous=previous)

    async def delete(self, task: str) -> AdapterEntry:
        """Removes a task from the store and the registry; requests in flight finish with their adapter."""
        assert self.store is not None and self.resident_adapters is not None
        async with self._write_lock:
            if self.registry.get(task) is None:
                await self._sync_locked()  # uploaded through another server moments ago?
            entry = self.entry(task)
            await asyncio.to_thread(self.store.delete, task)
            await self._clear_split_locked(task)
            self.registry.remove(task)
            self.resident_adapters.drop(task)
            self.metrics.registered.set(len(self.registry))
        log.info("adapter %s version %s deleted", task, entry.version)
        return entry

    async def rollback(self, task: str, version: str | None = None) -> Replacement:
        """Makes a kept version current again (default: the one before the current); servable on return.

        The kept file gets exactly the checks of an upload; requests in flight finish on the version they
        started with, and other servers sharing the store see the change as they see an upload.
        """
        async with self._write_lock:
            await self._sync_locked()
            result = await self._make_current_locked(task, version)
            await self._clear_split_locked(task)
        return result

    async def _make_current_locked(self, task: str, version: str | None) -> Replacement:
        assert self.store is not None and self.resident_adapters is not None
        store = self.store
        current = self.entry(task)
        listed = await asyncio.to_thread(store.versions, task)  # (AdapterEntry records, newest first)
        if version is None:
            order = [v.version for v in listed]
            i = order.index(current.version) if current.version in order else -1
            if i < 0 or i + 1 >= len(order):
                raise NotFound(
                    f"task {task!r} has no version older than the current one ({current.version}); "
                    f"GET /adapters/{task}/versions lists the versions kept"
                )
            version = order[i + 1]
        elif not names.valid_version(version) or version not in {v.version for v in listed}:
            raise NotFound(
                f"task {task!r} has no version {version!r}; GET /adapters/{task}/versions lists the versions kept"
            )
        if version == current.version:
            return Replacement(entry=current, previous=current)
        gone = NotFound(f"version {version} of task {task!r} is no longer kept")
        try:  # another server sharing the store may prune it at any moment: then it is gone, not an error
            data = await asyncio.to_thread(store.read_version, task, version)
            entry, prepared = await asyncio.to_thread(self._validate_upload, data, task, version)
            await asyncio.to_thread(store.promote, task, version)
        except FileNotFoundError:
            raise gone from None
        previous = self.registry.put(entry)
        self.resident_adapters.drop(task)
        self.resident_adapters.put(entry, prepared)
        log.info("adapter %s: version %s made current (was %s)", task, version, current.version)
        return Replacement(entry=entry, previous=previous)

    # -- traffic splits ---------------------------------------------------------------------------------------
    def split_info(self, task: str) -> dict[str, Any]:
        """The contract's SplitInfo: the split of ``task``, or its current version alone when there is none."""
        current = self.entry(task)
        split = self.splits.get(task)
        versions = split.as_dict() if split is not None else {current.version: 1.0}
        return {"task": task, "current": current.version, "active": split is not None, "versions": versions}

    async def set_split(self, task: str, versions: Any) -> dict[str, Any]:
        """Shares the unpinned requests of ``task`` between kept versions (:func:`.check_split`); stored, so
        every server sharing the store applies it. 400 for bad weights, 404 for a version no longer kept."""
        assert self.store is not None and self.split_store is not None
        async with self._write_lock:
            await self._sync_locked()
            self.entry(task)
            try:
                split = check_split(task, versions)
            except ValueError as e:
                raise InvalidInput(f"bad split for task {task!r}: {e}") from None
            kept = {v.version for v in await asyncio.to_thread(self.store.versions, task)}
            for version in split.versions:
                if version not in kept:
                    raise NotFound(
                        f"version {version} of task {task!r} is no longer kept; GET /adapters/{task}/versions "
                        "lists the versions kept"
                    )
            await asyncio.to_thread(self.split_store.write, split)
            self.splits[task] = split
            self._changed()
        log.info("adapter %s: traffic split %s", task, split.as_dict())
        return self.split_info(task)

    async def promote(self, task: str, version: str) -> Replacement:
        """Makes a version of the split current and clears the split (409 when there is none, or the version
        is not in it). The version is current before the split goes: no request runs a version outside both."""
        async with self._write_lock:
            await self._sync_locked()
            self.entry(task)
            split = self._split_or_conflict(task)
            if version not in split.versions:
                raise Conflict(
                    f"version {version!r} is not in the split of task {task!r} ({', '.join(split.versions)})"
                )
            result = await self._make_current_locked(task, version)
            await self._clear_split_locked(task)
        return result

    async def abort_split(self, task: str) -> dict[str, Any]:
        """Clears the split of ``task``: the current version serves every request again (409 when none)."""
        async with self._write_lock:
            await self._sync_locked()
            self.entry(task)
            self._split_or_conflict(task)
            await self._clear_split_locked(task)
        log.info("adapter %s: traffic split aborted", task)
        return self.split_info(task)

    def _split_or_conflict(self, task: str) -> Split:
        split = self.splits.get(task)
        if split is None:
            raise Conflict(f"task {task!r} has no traffic split; PUT /adapters/{task}/split sets one")
        return split

    async def _clear_split_locked(self, task: str) -> None:
        if self.split_store is None:
            return
        had = self.splits.pop(task, None) is not None
        if await asyncio.to_thread(self.split_store.clear, task) or had:
            self._changed()

    # -- versions and files -----------------------------------------------------------------------------------
    async def versions(self, task: str) -> dict[str, Any]:
        """The contract's VersionList: the kept versions of ``task``, newest first, with what their headers
        record, and which one is current."""
        assert self.store is not None
        current = self.entry(task)
        versions = await asyncio.to_thread(self._describe_versions, task, current.version)
        return {"task": task, "current": current.version, "keep": self.settings.keep_versions, "versions": versions}

    def _describe_versions(self, task: str, current: str) -> list[dict[str, Any]]:
        assert self.store is not None
        out = []
        for v in self.store.versions(task):
            meta = v.metadata
            out.append(
                {
                    "version": v.version,
                    "current": v.version == current,
                    "size_bytes": v.size_bytes,
                    "stored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v.stored_ns / 1e9)),
                    "created": meta.created,
                    "description": meta.description,
                    "metrics": meta.metrics,
                }
            )
        return out

    async def file(self, task: str, version: str | None = None) -> tuple[bytes, str]:
        """The exact bytes of the current version of ``task`` (or of a kept one) and their version."""
        assert self.store is not None
        store = self.store
        current = self.entry(task)
        want = version or current.version
        if not names.valid_version(want):
            raise NotFound(f"task {task!r} has no version {want!r}; GET /adapters/{task}/versions lists them")
        try:
            data = await asyncio.to_thread(store.read_version, task, want)
        except FileNotFoundError:
            if version is None:  # replaced by another server meanwhile: its current bytes
                await self.sync_store()
                return await self.file(task, self.entry(task).version)
            raise NotFound(
                f"task {task!r} has no version {want!r}; GET /adapters/{task}/versions lists the versions kept"
            ) from None
        return data, want
