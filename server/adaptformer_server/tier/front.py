"""A front process: HTTP, auth, Host/Origin checks, limits, decoding and answers; no model.

``/predict`` and ``/v2 .../infer`` run here up to the forward pass: the app of the one-process server
(:func:`~adaptformer_server.app.create_app`, every middleware and check) with a :class:`FrontRuntime`, whose
inference service sends the decoded tensors to the engine process (:class:`EngineLink`) and whose adapter view
(:class:`FrontAdapters`) caches the engine's registry entries until the registry changes. Every other route
(adapters, versions, training jobs, model metadata, /readyz, the UI) is passed to the engine process's app as it
came (:class:`EngineProxy`): one owner of adapter state, whichever front a request reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson
import torch
import zmq
import zmq.asyncio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptformer_server import tracing
from adaptformer_server.body_limit import BodyLimit
from adaptformer_server.errors import InvalidTaskName, NotFound, NotReady, PayloadTooLarge, RequestTimeout, error_body
from adaptformer_server.metrics import Metrics
from adaptformer_server.observability import bind_request_id, current_request_id, request_id_from
from adaptformer_server.repository.names import split_pin
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.repository.split import Split, current_caller
from adaptformer_server.services import InferenceService, check_task_name
from adaptformer_server.settings import Settings
from adaptformer_server.tier import wire
from adaptformer_server.tier.process import become_child
from adaptformer_server.tier.shared import EngineState, RunDir, Snapshot, alive

__all__ = ["Dispatcher", "EngineLink", "EngineProxy", "FrontAdapters", "FrontRuntime", "front_app"]

log = logging.getLogger("adaptformer_server.front")

_WATCH_S = 0.2  # how often a front looks whether its engine process is still the same live one
_REFRESH_TRIES = 5  # registry changes during one request's lookups before it goes on with what it read
_CONNECT_MS = 1000  # how long a request waits for the connection to a new engine process
_RETRY_AFTER = 2  # seconds, in the 503 of a request whose engine process stopped
_LOCAL = re.compile(r"/predict|/v2/models/[^/]+(/versions/[^/]+)?/infer|/healthz|/metrics")
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"proxy-connection"}


class EngineLink:
    """One front's connection to the engine process: a DEALER socket, the answers it waits for, and a watch on
    the engine's state block (a request whose engine process died fails with 503 within ``_WATCH_S``)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.state = EngineState(run.state_path)
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a message for an engine that is not connected
        self.sock.setsockopt(zmq.RECONNECT_IVL, 20)  # ms: a restarted engine is reached at once
        self.sock.connect(run.engine_address)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, asyncio.Future[tuple[dict[str, Any], list[Any]]]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: list[tuple[dict[str, Any], list[Any]]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._watch())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_all(NotReady("the server is shutting down"))
        self.sock.close(0)
        self.ctx.term()
        self.state.close()

    def snapshot(self) -> Snapshot:
        return self.state.read()

    def require_ready(self) -> Snapshot:
        now = self.state.read()
        if not now.ready or not alive(now.pid):
            raise NotReady(
                f"the engine process is {'restarting' if now.epoch > 1 else 'loading'}; retry shortly",
                retry_after=_RETRY_AFTER,
            )
        return now

    def _expect(self, header: dict[str, Any]) -> asyncio.Future[tuple[dict[str, Any], list[Any]]]:
        """Numbers a message and registers the future its answer resolves (tagged with the engine's epoch)."""
        now = self.require_ready()
        mid = next(self._ids)
        header["id"] = mid
        future: asyncio.Future[tuple[dict[str, Any], list[Any]]] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = (now.epoch, future)
        future.add_done_callback(lambda _: self._waiting.pop(mid, None))
        return future

    async def _send(self, message: list[Any]) -> None:
        try:
            await self.sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # a new engine process, not connected yet: give the connection a moment
            if not await self.sock.poll(timeout=_CONNECT_MS, flags=zmq.POLLOUT):  # type: ignore[call-arg]
                raise NotReady("the engine process is not connected; retry shortly", retry_after=_RETRY_AFTER) from None
            await self.sock.send_multipart(message, flags=zmq.NOBLOCK, copy=False)

    async def call(self, header: dict[str, Any], frames: Sequence[Any] = ()) -> tuple[dict[str, Any], list[Any]]:
        """Sends one message and waits for its answer; an answer with ``error`` raises that error."""
        future = self._expect(header)
        try:
            await self._send([wire.dumps(header), *frames])
        except BaseException:
            future.cancel()
            raise
        return _result(await future)

    async def infer(self, request: dict[str, Any], frames: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        """Sends one request's tensors to the engine and waits for its logits. The requests that arrive in one
        turn of the event loop travel as one message (one send here, one receive and one task in the engine)."""
        future = self._expect(request)
        self._outbox.append((request, frames))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return _result(await future)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        header = {"op": "infer", "requests": [request for request, _ in batch]}
        message = [wire.dumps(header), *(frame for _, frames in batch for frame in frames)]
        task = asyncio.ensure_future(self._send(message))
        task.add_done_callback(lambda t: self._sent(t, [request["id"] for request, _ in batch]))

    def _sent(self, task: asyncio.Future[None], ids: list[int]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        for mid in ids:
            waiting = self._waiting.get(mid)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_exception(error)

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            header = wire.loads(frames[0].buffer)
            if "replies" not in header:
                self._resolve(header, frames[1:])
                continue
            at = 1
            for reply in header["replies"]:  # one frame per job of each answered request
                n = len(reply.get("shapes", ()))
                self._resolve(reply, frames[at : at + n])
                at += n

    def _resolve(self, reply: dict[str, Any], frames: list[Any]) -> None:
        waiting = self._waiting.get(reply.get("id", 0))
        if waiting is not None and not waiting[1].done():
            waiting[1].set_result((reply, frames))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_S)
            if not self._waiting:
                continue
            now = self.state.read()
            if alive(now.pid) and now.ready:
                gone = [f for epoch, f in self._waiting.values() if epoch != now.epoch]
            else:
                gone = [f for _, f in self._waiting.values()]
            error = NotReady("the engine process stopped; retry shortly", retry_after=_RETRY_AFTER)
            for f in gone:
                if not f.done():
                    f.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for _, f in list(self._waiting.values()):
            if not f.done():
                f.set_exception(error)


def _result(answer: tuple[dict[str, Any], list[Any]]) -> tuple[dict[str, Any], list[Any]]:
    reply, _ = answer
    if "error" in reply:
        raise wire.decode_error(reply["error"])
    return answer


class RemoteBatcher:
    """The batcher's ``submit_many`` in a front: the jobs' tensors go to the engine in one message, which queues
    them on its batcher beside every other front's."""

    def __init__(self, link: EngineLink, traced: bool = False) -> None:
        self.link = link
        self.traced = traced

    async def submit_many(self, jobs: Sequence[tuple[Sequence[torch.Tensor], str, None]]) -> list[list[torch.Tensor]]:
        head: list[dict[str, Any]] = []
        frames: list[Any] = []
        for inputs, key, _ in jobs:
            head.append(
                {
                    "key": key,
                    "dtype": wire.dtype_name(inputs[0]) if inputs else "float32",
                    "shapes": [list(x.shape) for x in inputs],
                }
            )
            frames.extend(wire.tensor_frame(x) for x in inputs)
        request: dict[str, Any] = {"rid": current_request_id(), "jobs": head}
        if self.traced:  # the engine's queue wait and forward spans continue this request's trace
            request["trace"] = tracing.carrier()
        reply, out = await self.link.infer(request, frames)
        logits = []
        for shapes, frame in zip(reply["shapes"], out, strict=True):
            flat = wire.tensor_from(frame.buffer, "float32", [-1]) if shapes else None
            parts, start = [], 0
            for shape in shapes:
                n = math.prod(shape)
                assert flat is not None
                parts.append(flat[start : start + n].view(*shape))
                start += n
            logits.append(parts)
        return logits


def _possible(name: str) -> bool:
    try:
        check_task_name(name)
    except InvalidTaskName:
        return False
    return True


class FrontAdapters:
    """The engine's registry as a front sees it: entries fetched once and kept until the engine's registry
    changes (the state block's generation) or another engine process takes over (its epoch)."""

    def __init__(self, link: EngineLink) -> None:
        self.link = link
        self._seen: tuple[int, int] = (-1, -1)
        self._entries: dict[str, AdapterEntry] = {}
        self._images: list[AdapterEntry] | None = None
        self._splits: dict[str, Split | None] = {}  # the engine's traffic splits, by task, fetched as needed

    def _current(self) -> None:
        now = self.link.snapshot()
        if (now.epoch, now.generation) != self._seen:
            self._seen = (now.epoch, now.generation)
            self._entries.clear()
            self._images = None
            self._splits.clear()

    async def refresh(self, names: Sequence[str]) -> None:
        """Makes the entries of ``names`` (and, for ``*``, every image task) current before a request uses them.

        What the engine answers is kept only if its registry did not change while it was asked (the generation
        is the same after the answer as before the question); otherwise it is asked again, so an entry read just
        before an upload is never cached as the state after it.
        """
        for attempt in range(_REFRESH_TRIES):
            self._current()
            seen = self._seen
            entries: dict[str, AdapterEntry] = {}
            images = self._images
            for name in names:
                if name == "*":
                    if images is None:
                        _, out = await self.link.call({"op": "image_tasks"})
                        images = pickle.loads(out[0].bytes)
                        entries.update((e.task, e) for e in images)
                elif not _possible(name):
                    continue  # never asked for: the service's lookup answers it 400
                elif name not in self._entries and name not in entries:  # the engine's 404 raises here
                    _, out = await self.link.call({"op": "entry", "task": name})
                    entries[name] = pickle.loads(out[0].bytes)
            now = self.link.snapshot()
            if (now.epoch, now.generation) == seen or attempt == _REFRESH_TRIES - 1:
                self._entries.update(entries)
                self._images = images
                return

    def knows(self, task: str) -> bool:
        return task in self._entries

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter(self._images or [])

    def entry(self, task: str) -> AdapterEntry:
        """The entry :meth:`refresh` fetched for ``task`` (a request refreshes the names it uses first)."""
        entry = self._entries.get(task)
        if entry is None:
            raise NotFound(f"unknown task {split_pin(task)[0]!r}; GET /adapters lists the tasks this server has")
        return entry

    async def resolve(self, task: str) -> tuple[AdapterEntry, None]:
        """Admission in a front: the entry only; the engine pages the adapter in when the tensors arrive. A split
        task's version is chosen here, once (the engine runs the ``task@version`` the front sends).

        Another request's :meth:`refresh` may have dropped the entry since this request's own (the registry moved
        on meanwhile, for any task): then it is fetched again, never answered 404 for a task that exists.
        """
        if task not in self._entries:
            await self.refresh([task])
        entry = self.entry(task)
        caller = current_caller()
        if caller is not None and not caller.named_version and "@" not in task:
            if task not in self._splits:
                _, out = await self.link.call({"op": "split", "task": task})
                self._splits[task] = pickle.loads(out[0].bytes)
            split = self._splits[task]
            version = caller.pick(split) if split is not None else entry.version
            if version != entry.version:
                key = f"{task}@{version}"
                with contextlib.suppress(NotFound):  # no longer kept: the current version answers
                    if key not in self._entries:
                        _, out = await self.link.call({"op": "entry", "task": key})
                        self._entries[key] = pickle.loads(out[0].bytes)
                    entry = self._entries[key]
        if caller is not None:
            caller.served[entry.task] = entry.version
        return entry, None

    def version_label(self, task: str, version: str) -> bool:
        """Whether ``version`` of ``task`` gets its own metric series (current, or in a split)."""
        current, split = self._entries.get(task), self._splits.get(task)
        return (current is not None and current.version == version) or (split is not None and version in split.versions)


class FrontRuntime:
    """The runtime of a front process: ready while its engine process is; no backbone here."""

    def __init__(self, settings: Settings, metrics: Metrics, run: RunDir) -> None:
        self.settings = settings
        self.metrics = metrics
        self.run = run
        self.link = EngineLink(run)
        self.adapters = FrontAdapters(self.link)
        metrics.version_label = self.adapters.version_label
        self.inference: InferenceService[None] = InferenceService(
            settings, metrics, self.adapters, RemoteBatcher(self.link, traced=settings.tracing)
        )
        self.backbone = None
        self.error: str | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self.link.start()

    async def stop(self) -> None:
        await self.link.close()

    @property
    def state(self) -> str:
        return self.link.snapshot().state

    @property
    def ready(self) -> bool:
        return self.link.snapshot().ready

    def require_ready(self) -> None:
        self.link.require_ready()


class EngineProxy:
    """Passes a request to the engine process's app on its Unix socket and streams the answer back (a 503 with
    Retry-After while the engine process is down).

    The body limits hold here, as they would in the engine's app: a body over its route's limit is refused with 413
    as soon as it is known to be (before anything is passed on when its Content-Length says so), a stalled body
    with 408, by the front, which then closes the connection.
    """

    def __init__(self, run: RunDir, body_limit: BodyLimit) -> None:
        self.body_limit = body_limit
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=run.app_socket),
            base_url="http://engine",
            timeout=httpx.Timeout(None, connect=5.0),
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = current_request_id() or ""  # the Dispatcher bound it (bind_id)
        refusal, receive = self.body_limit.guard(scope, receive)
        if refusal is not None:
            refusal.headers["x-request-id"] = rid
            await refusal(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP and k.lower() != b"x-request-id"]
        headers.append((b"x-request-id", rid.encode("latin-1")))
        query = scope.get("query_string", b"")
        url = scope.get("raw_path") or scope["path"].encode()
        target = (url + (b"?" + query if query else b"")).decode("latin-1")

        async def body() -> Any:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        has_body = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        request = self.client.build_request(
            scope["method"], target, headers=headers, content=body() if has_body else None
        )
        try:
            response = await self.client.send(request, stream=True)
        except (PayloadTooLarge, RequestTimeout) as e:  # raised by the guarded receive while the body was passed on
            refused = e.response()
            refused.headers["x-request-id"] = rid
            await refused(scope, receive, send)
            return
        except httpx.TransportError as e:
            log.warning("cannot reach the engine process's app: %s", e)
            problem = error_body("not_ready", "the engine process is loading or restarting; retry shortly")
            await _send_json(send, 503, problem, rid)
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (httpx.TransportError, OSError) as e:
            log.warning("the engine process's answer broke off: %s", e)
        finally:
            await response.aclose()


def bind_id(scope: Scope) -> str:
    """The request's id (the client's when sane, else a new one) for this task's log lines (the front's access
    line); it goes on to the engine's app, whose lines and answer carry the same id."""
    given = next((v for k, v in scope["headers"] if k.lower() == b"x-request-id"), None)
    rid = request_id_from(given.decode("latin-1") if given is not None else None)
    bind_request_id(rid)
    return rid


async def _send_json(send: Send, status: int, body: dict[str, Any], rid: str) -> None:
    data = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"retry-after", str(_RETRY_AFTER).encode()),
        (b"x-request-id", rid.encode("latin-1")),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Dispatcher:
    """A front's ASGI app: the prediction routes (and /healthz, /metrics) to the local app, the rest to the
    engine process's app."""

    def __init__(self, local: ASGIApp, proxy: EngineProxy, link: EngineLink) -> None:
        self.local = local
        self.proxy = proxy
        self.link = link

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _LOCAL.fullmatch(scope["path"]):
            rid = bind_id(scope)
            if scope["path"] == "/readyz" and not self.link.snapshot().ready:  # ready only once tensors can flow
                now = self.link.snapshot()
                await _send_json(send, 503, {"status": now.state if now.epoch <= 1 else "restarting"}, rid)
                return
            await self.proxy(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.local(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sent(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.proxy.close()
            await send(message)

        await self.local(scope, receive, sent)


def front_app(settings: Settings, run_path: str, parent: int, number: int | None = None) -> ASGIApp:
    """A front process's app (uvicorn's factory in each worker process)."""
    become_child("adaptformer front", parent)
    from adaptformer_server.app import create_app
    from adaptformer_server.observability import configure_logging

    configure_logging(settings)
    # A front's tensor work (preprocessing, stacking) is small per request and its parallelism is the processes:
    # torch's intra-op threads would only wait on each other (and on the other fronts) for a core.
    torch.set_num_threads(1)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request passed on: the access log has it
    run = RunDir(__import__("pathlib").Path(run_path))
    app = create_app(settings, make_runtime=lambda s, m: FrontRuntime(s, m, run))
    return Dispatcher(app, EngineProxy(run, BodyLimit.of(settings)), app.state.runtime.link)
