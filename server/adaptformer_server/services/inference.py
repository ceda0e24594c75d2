"""The inference service: admission, decoding and the batched forward pass behind ``/predict`` and ``/v2`` infer.

A request names its tasks and hands over a way to read its body; :meth:`InferenceService.infer` checks the names
(400/404 before the body is read), reads the body, admits each task (its version and adapter object, kept until
the answer), decodes the body once per input spec and runs every task's samples through the batcher at once.
The routes only parse their protocol and shape the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from torch import nn

from adaptformer.engine import MultiTaskViT
from adaptformer.task import TaskAdapter, TaskInfo
from adaptformer_server.backbone import BackboneInfo
from adaptformer_server.batcher import Batcher
from adaptformer_server.errors import (
    IncompatibleAdapter,
    InvalidAdapter,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    counted,
)
from adaptformer_server.inputs import Decoder, decode_device
from adaptformer_server.metrics import Metrics
from adaptformer_server.repository.names import TASK_PATTERN, valid_task_name, valid_version
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.services.adapters import AdapterManager, split_pin
from adaptformer_server.settings import Settings

__all__ = ["ALL_IMAGE_TASKS", "InferenceResult", "InferenceService", "Payload", "check_task_name"]

log = logging.getLogger("adaptformer_server")

ALL_IMAGE_TASKS = "*"
TaskInputs = tuple[AdapterEntry, TaskAdapter, list[torch.Tensor]]  # a task's version, its adapter, its inputs


class Payload(Protocol):
    """A request body as its route parsed it, ready to decode for the tasks it was admitted to."""

    def pixels(self, decoder: Decoder) -> int:
        """Pixels decoding will cost (roughly): a small request is decoded on the event loop."""
        ...

    def decode(self, entries: list[AdapterEntry], decoder: Decoder) -> list[list[torch.Tensor]]:
        """The model inputs of each entry (blocking: image decoding), with the request's one pixel budget."""
        ...


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True)
class InferenceResult(Generic[P]):
    """What a request's tasks answered: the body as read, each task's entry (the version that ran) and its
    logits per input, and the time since the request came in."""

    payload: P
    results: list[tuple[AdapterEntry, list[torch.Tensor]]]
    latency_ms: float


def check_task_name(task: str) -> None:
    """400 for a name that can never be a task (before any lookup); ``task@version`` pins a kept version."""
    name, version = split_pin(task)
    if not valid_task_name(name) or (version is not None and not valid_version(version)):
        raise InvalidInput(
            f"task {task!r} is not a valid task name ({TASK_PATTERN}, no '..'), optionally followed by "
            "@<version> (12 hex digits, as GET /adapters/{task}/versions lists them)"
        )


class InferenceService:
    """Admits, decodes and runs prediction requests; owns the batcher and the forward pass.

    Args:
        settings: Server settings (limits, batching, decoding).
        metrics: The app's metrics (prediction counts and latency).
        adapters: Where tasks are looked up and paged in.
    """

    def __init__(self, settings: Settings, metrics: Metrics, adapters: AdapterManager) -> None:
        self.settings = settings
        self.metrics = metrics
        self.adapters = adapters
        self.engine: MultiTaskViT | None = None
        self.backbone: BackboneInfo | None = None
        self.batcher: Batcher | None = None

    # -- life cycle -------------------------------------------------------------------------------------------
    async def open(self, engine: MultiTaskViT, backbone: BackboneInfo) -> None:
        """Makes the batcher, runs one forward pass (allocations, kernel choice) and starts batching."""
        self.engine, self.backbone = engine, backbone
        s = self.settings
        self.batcher = Batcher(self.run_batch, s.max_batch_size, s.max_wait_ms, s.queue_size, self.metrics)
        await asyncio.to_thread(self._warm_up)
        self.batcher.start()

    async def close(self) -> None:
        """Stops batching; samples still waiting fail with 503."""
        if self.batcher is not None:
            await self.batcher.stop()

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
        """The entry a request names: 400 for an impossible name, 404 for an unknown task or a ``version`` that
        is not the one served (``/v2`` names versions in its paths)."""
        check_task_name(task)
        entry = self.adapters.entry(task)
        if version is not None and version != entry.version:
            raise NotFound(
                f"model {task!r} has no version {version!r}: this server serves version {entry.version} "
                f"(GET /v2/models/{task} lists it)"
            )
        return entry

    def expand(self, names: Sequence[str], version: str | None = None) -> list[str]:
        """The tasks a request names, in order, without repeats; ``*`` stands for every image task. 400/404 early."""
        tasks: list[str] = []
        for name in names:
            if name == ALL_IMAGE_TASKS:
                every = [e.task for e in self.adapters if e.spec.modality == "image"]
                if not every:
                    raise NotFound(
                        "task=* asks for every image task, but this server has none; GET /adapters lists them"
                    )
                tasks.extend(every)
            else:
                self.lookup(name, version)  # 404 before reading the body
                tasks.append(name)
        return list(dict.fromkeys(tasks))

    async def infer(
        self, names: Sequence[str], read: Callable[[], Awaitable[P]], *, version: str | None = None
    ) -> InferenceResult[P]:
        """Admits, decodes and runs one request; counts it under each task it names (status and latency).

        Args:
            names: The tasks named (``task@version`` pins a kept version; ``*`` every image task).
            read: Reads and parses the body (after the names passed their checks).
            version: The version the request requires (``/v2``'s versioned paths): 404 for any other.
        """
        start = time.perf_counter()
        labels: list[str] = ["_unknown"]  # unknown names never become label values

        def record(status: str) -> None:
            for label in labels:
                self.metrics.predictions.labels(label, status).inc()
            self.metrics.predict_latency.observe(time.perf_counter() - start)

        with counted(record, 200):
            if not names:
                raise InvalidInput(
                    "the query needs a `task` (repeat it for several tasks, or task=* for every image task)"
                )
            await self.adapters.refresh(names)  # a front's view of the engine's registry; nothing in one process
            tasks = self.expand(names, version)
            labels = list(dict.fromkeys(split_pin(t)[0] for t in tasks))  # pinned versions count as their task
            payload = await read()
            optional = set(tasks) - set(names)  # the tasks only `*` stands for
            resolved = await self._admit(tasks, optional, version)
            settings = self.settings
            decoder = Decoder(settings, device=decode_device(settings, self.backbone.device if self.backbone else None))
            entries = [entry for entry, _ in resolved]
            inputs = await decoder.run(payload.decode, entries, decoder, pixels=payload.pixels(decoder))
            jobs = [(entry, adapter, x) for (entry, adapter), x in zip(resolved, inputs, strict=True)]
            jobs, logits = await self._run(jobs, optional)
            latency_ms = round((time.perf_counter() - start) * 1000, 3)
            results = [(entry, out) for (entry, _, _), out in zip(jobs, logits, strict=True)]
            return InferenceResult(payload, results, latency_ms)

    async def _admit(
        self, tasks: list[str], optional: set[str], version: str | None
    ) -> list[tuple[AdapterEntry, TaskAdapter]]:
        """Admission: the version and adapter of each task, which the request keeps until it is answered.

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
                raise NotFound(f"model {name!r} version {version!r} was replaced while this request was admitted")
            resolved.append((entry, adapter))
        if not resolved:
            raise NotFound("task=* asks for every image task, but none can be served now; GET /adapters lists them")
        return resolved

    def _check_queue_size(self, jobs: list[TaskInputs]) -> None:
        total = sum(len(inputs) for _, _, inputs in jobs)
        if len(jobs) > 1 and total > self.settings.queue_size:  # one task keeps the contract's 503
            raise PayloadTooLarge(
                f"this request needs {total} samples ({len(jobs)} tasks); the queue holds at most "
                f"{self.settings.queue_size}: ask for fewer tasks or send fewer images"
            )

    async def _run(
        self, jobs: list[TaskInputs], optional: set[str]
    ) -> tuple[list[TaskInputs], list[list[torch.Tensor]]]:
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
                    tolerated = isinstance(error, (InvalidAdapter, IncompatibleAdapter, NotFound))  # admitted remotely
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
