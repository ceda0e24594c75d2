"""The engine process: the model, the adapters and the batcher of a server with several front processes.

It runs the one-process server's app (:func:`~adaptformer_server.app.create_app`: backbone, adapter manager, batcher,
training jobs, every route) on a Unix socket that the fronts pass their other routes to, and beside it
:class:`EngineServer`, which takes the tensors the fronts decoded and feeds them to the same batcher, so one
batch mixes the requests of every front. The process title is ``adaptformer engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from typing import Any

import torch
import zmq
import zmq.asyncio

from adaptformer_server import tracing
from adaptformer_server.errors import ApiError, ServingError
from adaptformer_server.observability import bind_request_id
from adaptformer_server.runtime import Runtime
from adaptformer_server.settings import Settings
from adaptformer_server.tier import wire
from adaptformer_server.tier.process import become_child
from adaptformer_server.tier.shared import FAILED, READY, EngineState, RunDir

__all__ = ["STARTUP_FAILURE", "EngineServer", "run_engine"]

log = logging.getLogger("adaptformer_server.engine")

STARTUP_FAILURE = 3  # the exit status of an engine that could not load: restarting it would fail the same way


class EngineServer:
    """Answers the fronts' messages (:mod:`.wire`) with the runtime's adapter manager and batcher.

    Args:
        runtime: The ready runtime of this process's app.
        address: The ZeroMQ address to bind (``ipc://...``).
    """

    def __init__(self, runtime: Runtime, address: str) -> None:
        self.runtime = runtime
        self.address = address
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: dict[bytes, list[tuple[dict[str, Any], list[Any]]]] = {}

    async def serve(self) -> None:
        self.sock.bind(self.address)
        log.info("engine: taking tensors from the fronts on %s", self.address)
        try:
            while True:
                frames = await self.sock.recv_multipart(copy=False)
                task = asyncio.create_task(self._answer(frames))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.sock.close(0)
            self.ctx.term()

    async def _answer(self, frames: list[Any]) -> None:
        identity, head, tensors = frames[0], frames[1], frames[2:]
        header = wire.loads(head.buffer)
        if header.get("op") == "infer":  # the requests of one turn of a front's event loop
            at = 0
            for request in header["requests"]:
                n = sum(len(job["shapes"]) for job in request["jobs"])
                task = asyncio.create_task(self._infer_one(identity, request, tensors[at : at + n]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                at += n
            return
        reply: dict[str, Any] = {"id": header["id"]}
        out: list[Any] = []
        try:
            if header.get("op") == "entry":
                out = [self._entry(header["task"])]
            elif header.get("op") == "split":  # a front chooses a split task's version (tier.front.FrontAdapters)
                out = [self._pickle(self.runtime.adapters.splits.get(header["task"]))]
            elif header.get("op") == "image_tasks":
                out = [self._pickle([e for e in self.runtime.adapters if e.spec.modality == "image"])]
            else:
                raise ValueError(f"unknown op {header.get('op')!r}")
        except Exception as e:
            reply["error"] = wire.encode_error(e)
            out = []
        with contextlib.suppress(zmq.ZMQError):  # the front went away
            await self.sock.send_multipart([identity, wire.dumps(reply), *out], copy=False)

    async def _infer_one(self, identity: Any, request: dict[str, Any], tensors: list[Any]) -> None:
        bind_request_id(request.get("rid"))  # this task's log lines carry the front's request id
        reply: dict[str, Any] = {"id": request["id"]}
        out: list[Any] = []
        try:
            with tracing.continue_trace(request.get("trace")):  # the front's span context, when it traces
                reply["shapes"], out = await self._infer(request, tensors)
        except (ApiError, ServingError) as e:
            reply["error"] = wire.encode_error(e)
        except Exception as e:
            log.exception("engine: request %s failed", request.get("rid"))
            reply["error"] = wire.encode_error(e)
        self._reply(identity.bytes, reply, out)

    def _reply(self, identity: bytes, reply: dict[str, Any], frames: list[Any]) -> None:
        """Queues an answer; the answers to one front that are ready in one turn of the loop go as one message."""
        box = self._outbox.setdefault(identity, [])
        box.append((reply, frames))
        if len(box) == 1:
            asyncio.get_running_loop().call_soon(self._flush, identity)

    def _flush(self, identity: bytes) -> None:
        box = self._outbox.pop(identity, [])
        if not box:
            return
        header = {"replies": [reply for reply, _ in box]}
        message = [identity, wire.dumps(header), *(f for _, frames in box for f in frames)]
        task = asyncio.ensure_future(self._send(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: list[Any]) -> None:
        with contextlib.suppress(zmq.ZMQError):  # the front went away: its requests are failed there
            await self.sock.send_multipart(message, copy=False)

    @staticmethod
    def _pickle(value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def _entry(self, task: str) -> bytes:
        return self._pickle(self.runtime.adapters.entry(task))  # NotFound: the error answer

    async def _infer(self, request: dict[str, Any], tensors: list[Any]) -> tuple[list[list[list[int]]], list[Any]]:
        """Admits each job's task at the version the front decoded for, queues every job at once, and answers
        each job's logits as one frame."""
        adapters = self.runtime.adapters
        batcher = self.runtime.inference.batcher
        assert batcher is not None
        jobs = []
        i = 0
        for job in request["jobs"]:
            entry, adapter = await adapters.resolve(job["key"])
            inputs = []
            for shape in job["shapes"]:
                inputs.append(wire.tensor_from(tensors[i].buffer, job["dtype"], shape))
                i += 1
            jobs.append((inputs, entry.key, adapter))
        if request.get("rid"):
            log.debug("engine: request %s: %d jobs", request["rid"], len(jobs))
        logits = await batcher.submit_many(jobs)
        shapes = [[list(o.shape) for o in outs] for outs in logits]
        frames = [wire.tensor_frame(_cat(outs)) for outs in logits]
        return shapes, frames

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _cat(outs: list[Any]) -> Any:
    return torch.cat([o.reshape(-1).float() for o in outs]) if outs else torch.empty(0)


def run_engine(settings: Settings, run: RunDir, parent: int) -> None:
    """The engine process's main (a ``multiprocessing`` spawn target): exits 0 when stopped (SIGTERM),
    :data:`STARTUP_FAILURE` when the backbone or the store cannot be loaded."""
    become_child("adaptformer engine", parent)
    from adaptformer_server.observability import configure_logging

    configure_logging(settings)
    code = asyncio.run(_main(settings, run))
    logging.shutdown()
    sys.exit(code)


async def _main(settings: Settings, run: RunDir) -> int:
    import uvicorn

    from adaptformer_server.app import create_app

    state = EngineState(run.state_path)
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    runtime.adapters.registry.on_change = state.bump
    config = uvicorn.Config(
        app,
        uds=run.app_socket,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # the fronts log the requests they pass on
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    failed = asyncio.Event()

    def fatal(exc: BaseException) -> None:
        failed.set()
        server.should_exit = True

    runtime.on_fatal = fatal
    engine_server = EngineServer(runtime, run.engine_address)

    async def when_ready() -> None:
        while runtime.state == "loading":  # the app's lifespan starts loading
            await asyncio.sleep(0.05)
        if runtime.ready:
            serving = asyncio.create_task(engine_server.serve(), name="adaptformer-engine-server")
            await asyncio.sleep(0)  # bound before the fronts are told
            state.set_status(READY)
            log.info("engine process %d ready", os.getpid())
            await serving
        else:
            state.set_status(FAILED)

    ready_task = asyncio.create_task(when_ready())
    try:
        await server.serve()
    finally:
        ready_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ready_task
    if failed.is_set() or runtime.state == "failed":
        state.set_status(FAILED)
        return STARTUP_FAILURE
    return 0
