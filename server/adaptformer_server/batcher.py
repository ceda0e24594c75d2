"""The batcher: an asyncio queue of samples, run as batches (any mix of tasks) on one inference thread.

A batch is at most ``max_batch_size`` samples of one input shape (images, or clips of one frame count and
tubelet), taken once it is full or once its oldest sample has waited ``max_wait_ms`` and the inference thread is
free (while one batch runs the next fills; a full one is stacked and waits behind it). Each sample carries the
TaskAdapter its request was admitted with; the batch's task table is built from those, so a replaced adapter
never changes a request in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from adaptformer.task import TaskAdapter
from adaptformer_server import tracing
from adaptformer_server.errors import NonFiniteScores, NotReady, Overloaded
from adaptformer_server.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["Batcher", "RunBatch"]

log = logging.getLogger("adaptformer_server.batcher")

# (inputs [batch, ...], table key per sample, task table) -> one logits tensor per sample
_STACK_INLINE = 1 << 20  # values: a batch smaller than this is stacked faster than it is handed to a thread

RunBatch = Callable[[torch.Tensor, Sequence[str], Mapping[str, TaskAdapter]], list[torch.Tensor]]


@dataclass
class _Sample:
    x: torch.Tensor  # [3, H, W] or [frames, 3, H, W]
    key: str  # task@version
    adapter: TaskAdapter
    group: tuple  # samples of one group can share a forward pass
    future: asyncio.Future[torch.Tensor]
    enqueued: float = field(default_factory=time.monotonic)
    trace: Any = None  # tracing on: the request's span context and id (tracing.request_context)
    started_ns: int = 0  # tracing on: when its batch started (time.time_ns)


class Batcher:
    """Collects samples into batches and runs them off the event loop.

    Args:
        run: The forward pass (called on the inference thread).
        max_batch_size: Most samples per batch (1 turns batching off).
        max_wait_ms: Longest the oldest sample of a batch waits for more.
        queue_size: Most samples waiting; beyond it ``submit`` raises Overloaded (503).
        metrics: Batch size, queue depth and timing metrics.
        pin_memory: Stack batches in page-locked memory, so the copy to a GPU is asynchronous (default: when
            CUDA is available).
        tracer: The tracer (``tracing.tracer_for``) when tracing is on: ``queue wait`` and ``forward`` spans.
    """

    def __init__(
        self,
        run: RunBatch,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        metrics: Metrics,
        pin_memory: bool | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.run = run
        self.tracer = tracer
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self.recent_batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self._pending: collections.deque[_Sample] = collections.deque()
        self._handed: collections.deque[int] = collections.deque()  # sizes of the batches handed over, running first
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptformer-infer")
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptformer-stack")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Samples waiting: queued, or in a batch handed over that waits behind the running one."""
        return len(self._pending) + sum(self._handed) - (self._handed[0] if self._handed else 0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="adaptformer-batcher")

    async def stop(self) -> None:
        """Stops taking batches, fails waiting samples with 503 and shuts the inference thread down."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            s = self._pending.popleft()
            if not s.future.done():
                s.future.set_exception(NotReady("the server is shutting down; retry on another instance"))
        self.metrics.queue_depth.set(0)
        await asyncio.to_thread(self._executor.shutdown, True)  # lets a running batch finish
        self._prep.shutdown(wait=False)

    async def submit(self, inputs: Sequence[torch.Tensor], key: str, adapter: TaskAdapter) -> list[torch.Tensor]:
        """Queues the samples of one request and waits for their logits (in order).

        Raises:
            Overloaded: the queue cannot take ``len(inputs)`` more samples.
        """
        return (await self.submit_many([(inputs, key, adapter)]))[0]

    async def submit_many(
        self, jobs: Sequence[tuple[Sequence[torch.Tensor], str, TaskAdapter]]
    ) -> list[list[torch.Tensor]]:
        """Queues the samples of several tasks at once (all or none) and waits for the logits of each job.

        Queued together, samples of one input shape share forward passes (one when they fit ``max_batch_size``):
        a multi-task request runs its image once per task in the same batch.

        Raises:
            Overloaded: the queue cannot take every sample of ``jobs``.
        """
        if self._closed:
            raise NotReady("the server is shutting down")
        count = sum(len(inputs) for inputs, _, _ in jobs)
        if self.depth + count > self.queue_size:
            raise Overloaded(
                f"the server is overloaded ({self.depth} samples waiting, queue size {self.queue_size}); "
                "retry after the number of seconds in Retry-After"
            )
        loop = asyncio.get_running_loop()
        tracer = self.tracer
        context = tracing.request_context() if tracer is not None else None
        per_job: list[list[_Sample]] = []
        for inputs, key, adapter in jobs:
            spec = adapter.info.input
            samples = []
            for x in inputs:
                group = (tuple(x.shape), spec.tubelet if x.ndim == 4 else 0)
                samples.append(_Sample(x, key, adapter, group, loop.create_future(), trace=context))
            per_job.append(samples)
        every = [s for samples in per_job for s in samples]
        submitted_ns = time.time_ns() if tracer is not None else 0
        self._pending.extend(every)
        self.metrics.queue_depth.set(self.depth)
        self._wakeup.set()
        try:
            await asyncio.gather(*(s.future for s in every))
        except BaseException:
            for s in every:
                s.future.cancel()  # the loop skips cancelled samples
            raise
        finally:
            if tracer is not None and every and all(s.started_ns for s in every):
                started = max(s.started_ns for s in every)
                tracing.record_span(tracer, "queue wait", submitted_ns, started, **{"adaptformer.samples": count})
        return [[s.future.result() for s in samples] for samples in per_job]

    # -- the loop ---------------------------------------------------------------------------------------------
    def _count(self, group: tuple) -> int:
        return sum(1 for s in self._pending if s.group == group and not s.future.done())

    def _take(self, group: tuple) -> list[_Sample]:
        batch: list[_Sample] = []
        rest: collections.deque[_Sample] = collections.deque()
        for s in self._pending:
            if s.future.done():  # cancelled: the client went away
                continue
            if s.group == group and len(batch) < self.max_batch_size:
                batch.append(s)
            else:
                rest.append(s)
        self._pending = rest
        if batch:
            self._handed.append(len(batch))
        self.metrics.queue_depth.set(self.depth)
        return batch

    def _ready(self, group: tuple, deadline: float, busy: int) -> bool:
        """Whether to hand a batch of ``group`` over now, with ``busy`` batches already on the inference thread.

        A full batch goes at once, even while another runs (at most one waits behind it, already stacked): the
        inference thread takes it the moment it is free. A partial batch goes once its oldest sample has waited
        ``max_wait`` and the inference thread is idle: while a batch runs, samples keep arriving, so waiting for
        the thread fills the next batch at no cost in latency (the samples could not start any earlier).
        """
        if busy >= 2:
            return False
        if self._count(group) >= self.max_batch_size:
            return True
        return busy == 0 and time.monotonic() >= deadline

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        running: set[asyncio.Future[None]] = set()
        while True:
            while self._pending and self._pending[0].future.done():
                self._pending.popleft()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._pending[0]
            deadline = head.enqueued + self.max_wait
            if not self._ready(head.group, deadline, len(running)):
                # wait for a new sample, a batch to finish or the deadline, whichever comes first
                self._wakeup.clear()
                waits: list[asyncio.Future] = [asyncio.ensure_future(self._wakeup.wait()), *running]
                timeout = None if running else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waits[0].cancel()
                continue
            batch = self._take(head.group)
            if not batch:
                continue
            run = asyncio.ensure_future(self._run_batch(loop, batch))
            running.add(run)
            run.add_done_callback(running.discard)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Sample]) -> None:
        now = time.monotonic()
        for s in batch:
            self.metrics.queue_wait.observe(now - s.enqueued)
        table = {s.key: s.adapter for s in batch}
        keys = [s.key for s in batch]
        xs = [s.x for s in batch]
        self.recent_batch_sizes.append(len(batch))
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_tasks.observe(len(table))
        span = None
        if self.tracer is not None:
            started_ns = time.time_ns()
            for s in batch:
                s.started_ns = started_ns
            span = tracing.batch_span(self.tracer, [s.trace for s in batch if s.trace is not None], keys)
        start = time.perf_counter()
        try:
            if sum(x.numel() for x in xs) < _STACK_INLINE:
                x = _stack(xs, self.pin_memory)
            else:  # a large batch is stacked off the event loop, while the batch before it runs
                x = await loop.run_in_executor(self._prep, _stack, xs, self.pin_memory)
            outputs = await loop.run_in_executor(self._executor, self.run, x, keys, table)
            if len(outputs) != len(batch) or any(o is None for o in outputs):
                raise RuntimeError(f"the engine returned {len(outputs)} outputs for a batch of {len(batch)}")
        except Exception as e:
            log.exception("batch of %d samples failed", len(batch))
            if span is not None:
                span.record_exception(e)
                span.set_status(tracing.error_status(e))
            for s in batch:
                if not s.future.done():
                    s.future.set_exception(e)
            return
        finally:
            if span is not None:
                span.end()
            self.metrics.batch_latency.observe(time.perf_counter() - start)
            self._handed.popleft()
            self.metrics.queue_depth.set(self.depth)
        for s, out in zip(batch, outputs, strict=True):
            if s.future.done():
                continue
            if not bool(torch.isfinite(out).all()):
                # finite weights can still overflow (e.g. values near 3e38): the adapter's fault, not NaN scores
                s.future.set_exception(NonFiniteScores(s.key))
            else:
                s.future.set_result(out)


def _stack(xs: list[torch.Tensor], pin: bool) -> torch.Tensor:
    """The batch tensor; in page-locked memory when ``pin`` (torch's host allocator caches those blocks), on the
    samples' device when they were decoded on a GPU."""
    if not pin or xs[0].device.type != "cpu":
        return torch.stack(xs)
    out = torch.empty((len(xs), *xs[0].shape), dtype=xs[0].dtype, pin_memory=True)
    return torch.stack(xs, out=out)
