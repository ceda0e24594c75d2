"""Retries: 503/429 with backoff honouring Retry-After, connection errors only where resending is safe."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from adaptformer_client import APIConnectionError, OverloadedError, ServerError
from adaptformer_server import schemas

OK_HEALTH = httpx.Response(200, json=schemas.Health(status="ok").model_dump(mode="json"))
UPLOADED = {
    "adapter": {
        "task": "cars",
        "input": {"size": 28, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "frames": 1},
        "version": "0123456789ab",
        "method": "linear",
        "modality": "image",
        "frames": 1,
        "num_classes": 2,
        "labels": ["a", "b"],
        "params": 10,
        "percent_of_backbone": 0.1,
        "size_bytes": 100,
        "backbone": "b",
        "fingerprint": "f",
        "config": None,
        "metrics": {},
        "created": "2026-11-29T07:00:00+00:00",
        "resident": True,
    },
    "replaced": False,
    "previous_version": None,
}
schemas.UploadResponse.model_validate(UPLOADED)  # the server's shape, checked where it is written


def error_body(code: str, message: str) -> dict:
    return schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=message)).model_dump(exclude_none=True)


def busy(status: int = 503, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json=error_body("overloaded", "queue full"), headers=headers)


def scripted(*steps: httpx.Response | type[httpx.TransportError]) -> tuple[Callable, list[httpx.Request]]:
    """A handler playing ``steps`` in order (an exception class is raised), and the requests it saw."""
    seen: list[httpx.Request] = []
    queue: Iterator = iter(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = next(queue)
        if isinstance(step, type):
            raise step("boom", request=request)
        # A fresh copy: a response object is consumed by the client that receives it.
        return httpx.Response(step.status_code, headers=step.headers, content=step.content)

    return handler, seen


@pytest.fixture
def run(through):
    """``await run(handler, "method", *args, **client_options)`` through Client or AsyncClient."""

    async def go(handler: Callable, method: str, *args, **options):
        async with through(handler, **options) as call:
            return await call(method, *args)

    return go


async def test_503_then_200_waits_as_retry_after_asks(run, sleeps) -> None:
    handler, seen = scripted(busy(retry_after="2"), OK_HEALTH)
    assert (await run(handler, "health")).status == "ok"
    assert len(seen) == 2
    assert sleeps == [2.0]


async def test_429_and_503_without_retry_after_back_off_exponentially(run, sleeps) -> None:
    handler, seen = scripted(busy(429), busy(503), busy(503), OK_HEALTH)
    await run(handler, "health", backoff=0.25, jitter=0)
    assert len(seen) == 4
    assert sleeps == [0.25, 0.5, 1.0]


async def test_backoff_waits_are_jittered_within_bounds(run, sleeps) -> None:
    """Clients that failed together must not retry in step: each wait is drawn from [1 - jitter, 1] of it."""
    handler, _ = scripted(*[busy()] * 8, OK_HEALTH)
    await run(handler, "health", backoff=1.0, max_backoff=1.0, max_retries=8, jitter=0.5)
    assert len(sleeps) == 8 and all(0.5 <= s <= 1.0 for s in sleeps)
    assert len(set(sleeps)) > 1  # 8 equal draws from a continuous range: never, short of a broken jitter


async def test_waits_are_capped(run, sleeps) -> None:
    date = email.utils.formatdate(time.time() + 3600, usegmt=True)
    handler, _ = scripted(busy(retry_after="120"), busy(retry_after=date), busy(), OK_HEALTH)
    await run(handler, "health", backoff=8, max_backoff=5)
    assert sleeps == [5, 5, 5]


async def test_retry_after_as_an_http_date(run, sleeps) -> None:
    handler, _ = scripted(busy(retry_after=email.utils.formatdate(time.time() + 3, usegmt=True)), OK_HEALTH)
    await run(handler, "health")
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 3.0


async def test_gives_up_after_max_retries_with_the_overloaded_error(run, sleeps) -> None:
    handler, seen = scripted(*[busy(retry_after="1")] * 3)
    with pytest.raises(OverloadedError, match="queue full") as info:
        await run(handler, "predict", "digits", b"img", max_retries=2)
    assert len(seen) == 3 and sleeps == [1.0, 1.0]
    assert info.value.retry_after == 1.0 and info.value.status == 503


async def test_max_retries_zero_and_other_errors_do_not_retry(run, sleeps) -> None:
    handler, seen = scripted(busy())
    with pytest.raises(OverloadedError):
        await run(handler, "health", max_retries=0)
    handler, seen = scripted(httpx.Response(500, json=error_body("internal_error", "bug")))
    with pytest.raises(ServerError, match="bug"):
        await run(handler, "health")
    assert len(seen) == 1 and sleeps == []


@pytest.mark.parametrize(
    ("method", "args"),
    [("health", ()), ("list_adapters", ()), ("delete_adapter", ("cars",)), ("predict", ("digits", b"img"))],
)
@pytest.mark.parametrize("error", [httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout])
async def test_idempotent_calls_retry_after_a_lost_connection(run, sleeps, method, args, error) -> None:
    handler, seen = scripted(error, httpx.Response(500))
    with pytest.raises(ServerError):
        await run(handler, method, *args, backoff=0.1)
    assert len(seen) == 2 and sleeps == [0.1]
    assert seen[0].content == seen[1].content  # the same body went out again


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout])
async def test_upload_is_not_resent_once_its_body_may_have_arrived(run, sleeps, error) -> None:
    handler, seen = scripted(error, httpx.Response(201, json=UPLOADED))
    with pytest.raises(APIConnectionError):
        await run(handler, "upload_adapter", b"weights")
    assert len(seen) == 1 and sleeps == []


async def test_upload_is_resent_when_the_connection_never_opened(run, sleeps) -> None:
    handler, seen = scripted(httpx.ConnectError, httpx.ConnectTimeout, httpx.Response(201, json=UPLOADED))
    result = await run(handler, "upload_adapter", b"weights")
    assert result.adapter.task == "cars"
    assert len(seen) == 3 and sleeps == [0.5, 1.0]


async def test_upload_is_resent_after_503(run, sleeps) -> None:
    handler, seen = scripted(busy(retry_after="0"), httpx.Response(201, json=UPLOADED))
    assert (await run(handler, "upload_adapter", b"weights")).adapter.version == "0123456789ab"
    assert len(seen) == 2 and sleeps == [0.0]
    assert seen[0].content == seen[1].content


async def test_unsupported_protocol_is_not_retried(run, sleeps) -> None:
    handler, seen = scripted(httpx.UnsupportedProtocol)
    with pytest.raises(APIConnectionError):
        await run(handler, "health")
    assert len(seen) == 1 and sleeps == []


def test_wait_until_ready_polls_through_refusals_and_loading(make_client, sleeps) -> None:
    body = schemas.Ready(status="ready", backbone="b", fingerprint="f", adapters=2).model_dump(mode="json")
    loading = schemas.Ready(status="loading").model_dump(exclude_none=True)
    handler, seen = scripted(httpx.ConnectError, httpx.Response(503, json=loading), httpx.Response(200, json=body))
    with make_client(handler, max_retries=0) as client:
        assert client.wait_until_ready(timeout=10, interval=0.2).adapters == 2
    assert len(seen) == 3 and sleeps == [0.2, 0.2]


async def test_wait_until_ready_times_out(make_async_client) -> None:
    def loading(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"status": "loading"})

    async with make_async_client(loading) as aclient:
        with pytest.raises(APIConnectionError, match="not ready after 0s"):
            await aclient.wait_until_ready(timeout=0)
