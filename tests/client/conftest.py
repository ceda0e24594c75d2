"""Fixtures of the client tests: an in-memory fake of the API contract behind ``httpx.MockTransport``.

Every body the fake answers is built with the server's own response models (``adaptformer_server.schemas``) and
validated by them, so a field the server renames, adds or drops breaks these tests instead of leaving the fake
behind; ``test_client_schemas.py`` checks the client's types against the same models.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from adaptformer_client import AsyncClient, Client
from adaptformer_server import schemas

URL = "http://adaptformer.test"
Part = tuple[str, str | None, str, bytes]  # (field, filename, content type, data)


def parse_multipart(request: httpx.Request) -> list[Part]:
    """Every part of a multipart/form-data request, in order."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    parts: list[Part] = []
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        parts.append(
            (str(name), part.get_filename(), part.get_content_type(), data if isinstance(data, bytes) else b"")
        )
    return parts


def answer(status: int, model: BaseModel, **headers: str) -> httpx.Response:
    """A response whose body is ``model`` (a server schema instance) as the server serialises it."""
    return httpx.Response(status, json=model.model_dump(mode="json", exclude_none=True), headers=headers)


def adapter_info(task: str, labels: list[str], modality: str = "image", frames: int = 1, data: bytes = b"") -> dict:
    info = {
        "task": task,
        "description": f"what {task} answers",
        "input": {"size": 28, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "frames": frames},
        "version": hashlib.sha256(data or task.encode()).hexdigest()[:12],
        "method": "adaptformer",
        "modality": modality,
        "frames": frames,
        "num_classes": len(labels),
        "labels": labels,
        "params": 12_345,
        "percent_of_backbone": 0.57,
        "size_bytes": len(data) or 50_000,
        "backbone": "embedded-vit",
        "fingerprint": "f1n9erpr1nt0",
        "config": {"bottleneck": 16, "scale": 0.1},
        "metrics": {"accuracy": 0.98},
        "created": "2026-11-29T07:00:00+00:00",
        "resident": True,
    }
    return schemas.AdapterInfo.model_validate(info).model_dump(mode="json")  # the server's fields, no others


def error(status: int, code: str, message: str, check: str | None = None, **headers: str) -> httpx.Response:
    return answer(status, schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=message, check=check)),
                  **headers)  # fmt: skip


class FakeServer:
    """Answers the contract's routes from memory and records each request.

    Predictions are deterministic: an input's best label is ``labels[len(data) % num_classes]``.
    Uploaded files starting with ``BAD`` are invalid (422), with ``ALIEN`` incompatible (409).
    """

    def __init__(self) -> None:
        self.adapters: dict[str, dict] = {
            "digits": adapter_info("digits", [str(i) for i in range(10)]),
            "motion": adapter_info("motion", ["wave", "jump", "sit"], modality="clip", frames=4),
        }
        self.requests: list[httpx.Request] = []
        self.parts: list[Part] = []  # of the last multipart request
        self.ready = True
        self.api_key: str | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path == "/healthz":
            return answer(200, schemas.Health(status="ok"))
        if path == "/readyz":
            if not self.ready:
                return answer(503, schemas.Ready(status="loading"))
            ready = schemas.Ready(status="ready", backbone="embedded-vit", fingerprint="f1n9erpr1nt0", adapters=2)
            return answer(200, ready)
        if path == "/metrics":
            return httpx.Response(200, text="# TYPE requests_total counter\nrequests_total 3\n")
        if self.api_key is not None:
            auth = request.headers.get("authorization")
            if auth is None:
                return error(401, "unauthorized", "this server needs an API key", **{"WWW-Authenticate": "Bearer"})
            if auth != f"Bearer {self.api_key}":
                return error(403, "forbidden", "wrong API key")
        if path == "/predict" and method == "POST":
            return self._predict(request)
        if path == "/adapters" and method == "GET":
            return answer(200, schemas.AdapterList(adapters=[self.adapters[t] for t in sorted(self.adapters)]))
        if path == "/adapters" and method == "POST":
            return self._upload(request)
        if path.startswith("/adapters/"):
            task = path.removeprefix("/adapters/")
            if task not in self.adapters:
                return error(404, "not_found", f"no task {task!r}; GET /adapters lists the tasks")
            if method == "GET":
                return httpx.Response(200, json=self.adapters[task])
            if method == "DELETE":
                info = self.adapters.pop(task)
                return answer(200, schemas.DeleteResponse(task=task, deleted=True, version=info["version"]))
        return error(404, "not_found", f"no route {method} {path}")

    def _predict(self, request: httpx.Request) -> httpx.Response:
        task = request.url.params.get("task", "")
        if task not in self.adapters:
            return error(404, "not_found", f"no task {task!r}; GET /adapters lists the tasks")
        info = self.adapters[task]
        top_k = min(int(request.url.params.get("top_k", 5)), info["num_classes"])
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "unsupported_media_type", "send multipart/form-data or an image/* body")
        self.parts = parse_multipart(request)
        fields = {field for field, *_ in self.parts}
        if info["modality"] == "image":
            if fields != {"image"}:
                return error(400, "invalid_input", f"task {task!r} takes images, not clips")
            inputs = [data for *_, data in self.parts]
        elif fields == {"frame"}:
            if len(self.parts) != info["frames"]:
                return error(400, "invalid_input", f"{len(self.parts)} frames; task {task!r} takes {info['frames']}")
            inputs = [b"".join(data for *_, data in self.parts)]
        elif fields == {"image"} and len(self.parts) == 1:
            inputs = [self.parts[0][3]]
        else:
            return error(400, "invalid_input", f"task {task!r} takes one clip")
        labels = info["labels"]
        predictions = []
        for data in inputs:
            first = len(data) % len(labels)
            ranked = [labels[(first + i) % len(labels)] for i in range(top_k)]
            predictions.append(
                [schemas.Prediction(label=label, score=round(0.9 / 2**i, 4)) for i, label in enumerate(ranked)]
            )
        body = schemas.PredictResponse(
            task=task, version=info["version"], modality=info["modality"], predictions=predictions, latency_ms=12.5
        )
        return answer(200, body)

    def _upload(self, request: httpx.Request) -> httpx.Response:
        self.parts = parse_multipart(request)
        files = [data for field, _, _, data in self.parts if field == "file"]
        form = {field: data.decode() for field, filename, _, data in self.parts if filename is None}
        if len(files) != 1:
            return error(422, "validation_error", "send the adapter file in the field 'file'")
        data = files[0]
        if data.startswith(b"BAD"):
            return error(422, "invalid_adapter", "not a safetensors file: re-export the adapter")
        if data.startswith(b"ALIEN"):
            return error(409, "incompatible_adapter", "trained on another backbone", check="fingerprint")
        task = form.get("task", "uploaded")
        previous = self.adapters.get(task)
        self.adapters[task] = adapter_info(task, ["a", "b"], data=data)
        body = schemas.UploadResponse(
            adapter=self.adapters[task],
            replaced=previous is not None,
            previous_version=previous["version"] if previous else None,
        )
        return httpx.Response(201, json=body.model_dump(mode="json"))  # previous_version: null when new


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the clients asked for (their sleep is replaced by recording)."""
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Callable[..., Client]:
    def make(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Client:
        kwargs.setdefault("jitter", 0)  # exact waits, unless a test is about the jitter
        return Client(URL, transport=httpx.MockTransport(handler), sleep=sleeps.append, **kwargs)

    return make


@pytest.fixture
def make_async_client(sleeps: list[float]) -> Callable[..., AsyncClient]:
    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    def make(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> AsyncClient:
        kwargs.setdefault("jitter", 0)
        return AsyncClient(URL, transport=httpx.MockTransport(handler), sleep=record, **kwargs)

    return make


Call = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["sync", "async"])
def through(
    request: pytest.FixtureRequest, make_client: Callable[..., Client], make_async_client: Callable[..., AsyncClient]
) -> Callable[..., AbstractAsyncContextManager[Call]]:
    """``async with through(handler, **client_options) as call``: ``await call("predict", "digits", image)`` runs
    one client method, through Client or AsyncClient (the fixture's two params); the client is closed after."""

    @asynccontextmanager
    async def opened(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> AsyncIterator[Call]:
        if request.param == "sync":
            with make_client(handler, **options) as client:

                async def sync_call(method: str, *args: Any, **kwargs: Any) -> Any:
                    return getattr(client, method)(*args, **kwargs)

                yield sync_call
        else:
            async with make_async_client(handler, **options) as aclient:

                async def async_call(method: str, *args: Any, **kwargs: Any) -> Any:
                    return await getattr(aclient, method)(*args, **kwargs)

                yield async_call

    return opened


@pytest.fixture
async def call(fake: FakeServer, through: Callable[..., AbstractAsyncContextManager[Call]]) -> AsyncIterator[Call]:
    """``await call("predict", "digits", image)``: one client method on ``fake``, through Client or AsyncClient."""
    fake.api_key = "k"
    async with through(fake.handle, api_key="k") as each:
        yield each
