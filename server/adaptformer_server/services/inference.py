"""The inference service: admission, decoding and the batched forward pass behind ``/predict`` and ``/v2`` infer.

A route asks the service to admit the names of a request (:meth:`InferenceService.admit`: 400/404 before the body
is read), parses its body within the service's :class:`~adaptformer_server.limits.Limits`, hands the parsed body to
:meth:`InferenceService.infer` and shapes the answer. ``infer`` admits each task (its version and adapter object,
kept until the answer), decodes the body once per input spec and runs every task's samples through the batcher at
once. Every prediction metric is counted here, once a request, by :meth:`InferenceService.admit`.

Errors are the serving layer's own (``errors.ServingError``) or the adapter manager's; ``errors.as_api_error``
answers them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from torch import nn

from adaptformer.engine import MultiTaskViT
from adaptformer.task import TaskAdapter, TaskInfo
from adaptformer_server import tracing
from adaptformer_server.backbone import BackboneInfo
from adaptformer_server.batcher import Batcher
from adaptformer_server.errors import (
    IncompatibleAdapter,
    InvalidAdapter,
    InvalidTaskName,
    NonFiniteScores,
    NoTaskNamed,
    NoTaskToServe,
    NotFound,
    TooManySamples,
    UnknownVersion,
    VersionReplaced,
    counted,
)
from adaptformer_server.inputs import Decoder, decode_device
from adaptformer_server.limits import Limits
from adaptformer_server.metrics import Metrics
from adaptformer_server.repository.names import split_pin, valid_task_name, valid_version
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.settings import Settings

__all__ = [
    "ALL_IMAGE_TASKS",
    "Admission",
    "InferenceResult",
    "InferenceService",
    "Payload",
    "SampleQueue",
    "TaskDirectory",
    "check_task_name",
]

log = logging.getLogger("adaptformer_server")

ALL_IMAGE_TASKS = "*"
_TOLERATED = (InvalidAdapter, IncompatibleAdapter, NotFound, NonFiniteScores)  # what leaves a `*` task out


class Payload(Protocol):
    """A request body as its route parsed it, ready to decode for the tasks it was admitted to."""

    def pixels(self, decoder: Decoder) -> int:
        """Pixels decoding will cost (roughly): a small request is decoded on the event loop."""
        ...

    def decode(self, entries: list[AdapterEntry], decoder: Decoder) -> list[list[torch.Tensor]]:
        """The model inputs of each entry (blocking: image decoding), with the request's one pixel budget."""
        ...


P = TypeVar("P", bound=Payload)
# What admission gives beside a task's entry: its TaskAdapter where the model runs (one process, or the engine
# process), nothing in a front process (the engine pages the adapter in when the samples arrive).
A = TypeVar("A")
A_co = TypeVar("A_co", covariant=True)
A_contra = TypeVar("A_contra", contravariant=True)
TaskInputs = tuple[AdapterEntry, A, list[torch.Tensor]]  # a task's version, what admission gave, its inputs


class TaskDirectory(Protocol[A_co]):
    """Where the service finds tasks: the :class:`AdapterManager` where the model runs; in a front, the engine's
    registry as the front sees it (``tier.front.FrontAdapters``)."""

    def __iter__(self) -> Iterator[AdapterEntry]:
        """The current entry of every task."""
        ...

    async def refresh(self, names: Sequence[str]) -> None:
        """Makes the entries of ``names`` current before a request uses them."""
        ...

    def entry(self, task: str) -> AdapterEntry:
        """The entry of ``task`` (or ``task@version``); :class:`NotFound` when unknown."""
        ...

    async def resolve(self, task: str) -> tuple[AdapterEntry, A_co]:
        """Admission of one task: its entry, and what the samples travel with to the forward pass."""
        ...


class SampleQueue(Protocol[A_contra]):
    """Where admitted samples wait for a forward pass: the :class:`Batcher` where the model runs; in a front, the
    engine's batcher over the wire (``tier.front.RemoteBatcher``)."""

    async def submit_many(
        self, jobs: Sequence[tuple[Sequence[torch.Tensor], str, A_contra]]
    ) -> list[list[torch.Tensor]]:
        """Queues the samples of several tasks at once (all or none); the logits of each job, in order."""
        ...


@dataclass(frozen=True)
class Admission:
    """The names of a request once they passed their checks, and the tasks they stand for.

    Attributes:
        tasks: The tasks named, in order, without repeats (``*``: every image task; ``task@version`` pins one).
        entries: Each task's entry when the names were checked (its input spec says what a body may hold).
        optional: The tasks only ``*`` stands for: left out, not failed, when they cannot run.
        version: The version the request requires (``/v2``'s versioned paths), if any.
        start: When the request was admitted (``time.perf_counter()``): its latency counts from here.
    """

    tasks: list[str]
    entries: list[AdapterEntry]
    optional: frozenset[str]
    version: str | None
    start: float


@dataclass(frozen=True)
class InferenceResult(Generic[P]):
    """What a request's tasks answered: the body as parsed, each task's entry (the version that ran) and its
    logits per input, and the time since the request was admitted."""

    payload: P
    results: list[tuple[AdapterEntry, list[torch.Tensor]]]
    latency_ms: float


def check_task_name(task: str) -> None:
    """Refuses a name that can never be a task (before any lookup); ``task@version`` pins a kept version.

    Raises:
        InvalidTaskName: the name, or the version after ``@``, is malformed.
    """
    name, version = split_pin(task)
    if not valid_task_name(name) or (version is not None and not valid_version(version)):
        raise InvalidTaskName(task)


class InferenceService(Generic[A]):
    """Admits, decodes and runs prediction requests; owns the batcher, the forward pass and the prediction metrics.

    The same service runs where the model runs (``InferenceService[TaskAdapter]``: :meth:`open` makes its batcher)
    and in a front process (``InferenceService[None]``: the front gives it the engine's batcher over the wire).

    Args:
        settings: Server settings (limits, batching, decoding).
        metrics: The app's metrics (prediction counts and latency).
        adapters: Where tasks are looked up and paged in.
        batcher: Where admitted samples are batched (``None``: :meth:`open` makes one).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        adapters: TaskDirectory[A],
        batcher: SampleQueue[A] | None = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits.of(settings)
        self.metrics = metrics
        self.adapters = adapters
        self.engine: MultiTaskViT | None = None
        self.backbone: BackboneInfo | None = None
        self.batcher = batcher
        self._own_batcher: Batcher | None = None
        self.tracer = tracing.tracer_for(settings.tracing)  # None when off: each stage's span is a no-op

    # -- life cycle -------------------------------------------------------------------------------------------
    async def open(self: InferenceService[TaskAdapter], engine: MultiTaskViT, backbone: BackboneInfo) -> None:
        """Makes the batcher, runs one forward pass (allocations, kernel choice) and starts batching."""
        self.engine, self.backbone = engine, backbone
        s = self.settings
        batcher = Batcher(
            self.run_batch, s.max_batch_size, s.max_wait_ms, s.queue_size, self.metrics, tracer=self.tracer
        )
        await asyncio.to_thread(self._warm_up)
        batcher.start()
        self.batcher = self._own_batcher = batcher

    async def close(self) -> None:
        """Stops batching; samples still waiting fail with 503."""
        if self._own_batcher is not None:
            await self._own_batcher.stop()

    def _warm_up(self) -> None:
        assert self.backbone is not None
        size = self.backbone.img_size or 224
        probe = TaskAdapter(TaskInfo("warmup", ["0"]), nn.Linear(self.backbone.num_features, 1), None, {})
        probe = probe.to(self.backbone.device, self.backbone.dtype).eval()
        self.run_batch(torch.zeros(1, 3, size, size), ["warmup"], {"warmup": probe})

    def run_batch(self, x: torch.Tensor, keys: Sequence[str], table: Mapping[str, TaskAdapter]) -> list[torch.Tensor]:
        """The forward pass of one batch (on the batcher's inference thread): logits per sample, on the host."""
        assert self.engine is not None and self.backbone is not None
        x = x.to(device=self.backbone.device, dtype=self.backbone.dtype, non_blocking=True)
        out = self.engine(x, list(keys), table=table)
        if not out:
            return []
        # One device-to-host copy for the batch (a copy per row would wait on the device once per row).
        flat = torch.cat([o.reshape(-1) for o in out]).float().cpu()
        return [part.view(o.shape) for part, o in zip(flat.split([o.numel() for o in out]), out, strict=True)]

    # -- a request --------------------------------------------------------------------------------------------
    def lookup(self, task: str, version: str | None = None) -> AdapterEntry:
        """The entry a request names.

        Raises:
            InvalidTaskName: an impossible name.
            NotFound: an unknown task (the adapter manager's).
            UnknownVersion: ``version`` is not the one served (``/v2`` names versions in its paths).
        """
        check_task_name(task)
        entry = self.adapters.entry(task)
        if version is not None and version != entry.version:
            raise UnknownVersion(task, version, entry.version)
        return entry

    @asynccontextmanager
    async def admit(self, names: Sequence[str], *, version: str | None = None) -> AsyncIterator[Admission]:
        """Checks the names of a request, then counts the request from here to its answer.

        Used as ``async with service.admit(names) as admitted:``, in which the route reads and parses its body,
        calls :meth:`infer` and shapes the answer: the request is counted once under each task it names, with the
        status it ends with whichever step fails (:meth:`Metrics.observe_prediction`), and timed.

        Args:
            names: The tasks named (``task@version`` pins a kept version; ``*`` every image task).
            version: The version the request requires (``/v2``'s versioned paths).

        Raises:
            NoTaskNamed, InvalidTaskName, NotFound, UnknownVersion, NoTaskToServe: before the body is read.
        """
        start = time.perf_counter()
        labels: list[str] = ["_unknown"]  # unknown names never become label values

        def record(status: str) -> None:
            self.metrics.observe_prediction(labels, names, status, time.perf_counter() - start)

        with counted(record, 200):
            with tracing.span(self.tracer, "admission"):
                if not names:
                    raise NoTaskNamed()
                await self.adapters.refresh(names)  # a front's view of the engine's registry; nothing in one process
                tasks, entries = self._expand(names, version)
            labels = list(dict.fromkeys(split_pin(t)[0] for t in tasks))  # pinned versions count as their task
            optional = frozenset(tasks) - frozenset(names)  # the tasks only `*` stands for
            yield Admission(tasks, entries, optional, version, start)

    def _expand(self, names: Sequence[str], version: str | None) -> tuple[list[str], list[AdapterEntry]]:
        """The tasks the names stand for, in order, without repeats, and their entries; ``*`` stands for every
        image task."""
        found: dict[str, AdapterEntry] = {}
        for name in names:
            if name == ALL_IMAGE_TASKS:
                every = [e for e in self.adapters if e.spec.modality == "image"]
                if not every:
                    raise NoTaskToServe()
                for entry in every:
                    found.setdefault(entry.task, entry)
            elif name not in found:
                found[name] = self.lookup(name, version)
        return list(found), list(found.values())

    async def infer(self, admitted: Admission, payload: P) -> InferenceResult[P]:
        """Runs an admitted request: admits each task (the version and adapter object it keeps until the answer),
        decodes ``payload`` once per input spec with one pixel budget, and runs every task's samples through the
        batcher at once.

        Raises:
            NotFound, VersionReplaced, InvalidAdapter, IncompatibleAdapter: a task named outright cannot run.
            TooManySamples, Overloaded: the queue cannot take the request's samples.
        """
        resolved = await self._resolve(admitted.tasks, admitted.optional, admitted.version)
        settings = self.settings
        decoder = Decoder(settings, device=decode_device(settings, self.backbone.device if self.backbone else None))
        entries = [entry for entry, _ in resolved]
        with tracing.span(self.tracer, "decode"):
            inputs = await decoder.run(payload.decode, entries, decoder, pixels=payload.pixels(decoder))
        jobs = [(entry, adapter, x) for (entry, adapter), x in zip(resolved, inputs, strict=True)]
        jobs, logits = await self._run(jobs, admitted.optional)
        latency_ms = round((time.perf_counter() - admitted.start) * 1000, 3)
        results = [(entry, out) for (entry, _, _), out in zip(jobs, logits, strict=True)]
        for entry, out in results:
            if out:
                top1 = torch.softmax(torch.stack([o.reshape(-1).float() for o in out]), dim=-1).amax(dim=-1)
                self.metrics.observe_scores(entry.task, entry.version, top1.tolist())
        return InferenceResult(payload, results, latency_ms)

    async def _resolve(
        self, tasks: list[str], optional: frozenset[str], version: str | None
    ) -> list[tuple[AdapterEntry, A]]:
        """The version and adapter of each task, which the request keeps until it is answered.

        A task in ``optional`` (one that ``*`` stood for) that is deleted meanwhile, or whose stored file cannot be
        served, is left out rather than failing the request for the other tasks; a task named outright is not.
        """
        resolved = []
        for name in tasks:
            try:
                entry, adapter = await self.adapters.resolve(name)
            except (NotFound, InvalidAdapter, IncompatibleAdapter) as e:
                if name not in optional:
                    raise
                log.info("task=* leaves out %s: %s", name, e.message)
                continue
            if version is not None and entry.version != version:
                raise VersionReplaced(name, version)
            resolved.append((entry, adapter))
        if not resolved:
            raise NoTaskToServe(servable=True)
        return resolved

    def _check_queue_size(self, jobs: list[TaskInputs[A]]) -> None:
        total = sum(len(inputs) for _, _, inputs in jobs)
        if len(jobs) > 1 and total > self.settings.queue_size:  # one task keeps the contract's 503
            raise TooManySamples(total, len(jobs), self.settings.queue_size)

    async def _run(
        self, jobs: list[TaskInputs[A]], optional: frozenset[str]
    ) -> tuple[list[TaskInputs[A]], list[list[torch.Tensor]]]:
        """Runs the inputs of every job through the batcher at once (shared forward passes); returns the jobs kept
        and their logits.

        A job of a task in ``optional`` whose adapter fails (non-finite scores) is left out instead of failing the
        others: then each task's samples are queued on their own, in the same turn of the event loop, so they still
        share forward passes. Any other error (overload, shutdown) cancels the rest and fails the request.
        """
        self._check_queue_size(jobs)
        assert self.batcher is not None
        batcher = self.batcher
        if not optional.intersection(entry.task for entry, _, _ in jobs):
            return jobs, await batcher.submit_many([(inputs, entry.key, adapter) for entry, adapter, inputs in jobs])
        runs = [asyncio.ensure_future(batcher.submit_many([(x, entry.key, adapter)])) for entry, adapter, x in jobs]
        try:
            pending = set(runs)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for run, job in zip(runs, jobs, strict=True):
                    error = run.exception() if run in done else None
                    tolerated = isinstance(error, _TOLERATED)  # admitted remotely, or its scores overflow
                    if error is not None and not (tolerated and job[0].task in optional):
                        raise error
        finally:
            for run in runs:
                run.cancel()  # nothing when done; otherwise its samples leave the queue
        kept = [(job, run.result()[0]) for job, run in zip(jobs, runs, strict=True) if run.exception() is None]
        for job, run in zip(jobs, runs, strict=True):
            if run.exception() is not None:
                log.info("task=* leaves out %s: %s", job[0].task, run.exception())
        if not kept:  # every task failed: the first one's error
            error = runs[0].exception()
            assert error is not None
            raise error
        return [job for job, _ in kept], [logits for _, logits in kept]
