"""Client options users set once: URL and key from the environment, and a timeout for one call."""

from __future__ import annotations

import httpx
import pytest

from adaptformer_client import AsyncClient, Client
from adaptformer_client.client import DEFAULT_URL

PREDICTED = {"task": "digits", "version": "v", "modality": "image", "predictions": [[]], "latency_ms": 1.0}


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_url_and_key_come_from_the_environment(monkeypatch, cls) -> None:
    monkeypatch.setenv("ADAPTFORMER_URL", "http://models.internal:9000/")
    monkeypatch.setenv("ADAPTFORMER_API_KEY", "k-from-env")
    client = cls()
    assert client.base_url == "http://models.internal:9000"
    assert client._headers["Authorization"] == "Bearer k-from-env"
    explicit = cls("http://other:1", api_key="k-explicit")
    assert explicit.base_url == "http://other:1" and explicit._headers["Authorization"] == "Bearer k-explicit"


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_without_environment_the_defaults_apply(monkeypatch, cls) -> None:
    monkeypatch.delenv("ADAPTFORMER_URL", raising=False)
    monkeypatch.delenv("ADAPTFORMER_API_KEY", raising=False)
    client = cls()
    assert client.base_url == DEFAULT_URL and "Authorization" not in client._headers


def test_jitter_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Client("http://x", jitter=1.5)


def _timeouts(seen: list[dict]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=PREDICTED)

    return handler


def test_a_call_can_have_its_own_timeout(tmp_path) -> None:
    seen: list[dict] = []
    image = bytes.fromhex("89504e470d0a1a0a")  # sent as is; the mock server does not decode it
    with Client("http://x", timeout=30, transport=httpx.MockTransport(_timeouts(seen))) as client:
        client.predict("digits", image)
        client.predict("digits", image, timeout=2.5)
        client.predict_batch("digits", [image], timeout=None)
    assert seen[0]["read"] == 30 and seen[1]["read"] == 2.5 and seen[2]["read"] is None


async def test_an_async_call_can_have_its_own_timeout() -> None:
    seen: list[dict] = []
    image = bytes.fromhex("89504e470d0a1a0a")

    async def handler(request: httpx.Request) -> httpx.Response:
        return _timeouts(seen)(request)

    async with AsyncClient("http://x", timeout=30, transport=httpx.MockTransport(handler)) as client:
        await client.predict("digits", image, timeout=4)
        await client.predict_clip("digits", [image, image])
    assert seen[0]["read"] == 4 and seen[1]["read"] == 30
