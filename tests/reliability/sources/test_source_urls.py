"""Adapter sources: a malformed source is a 4xx naming what is wrong, an unreachable or slow hub a 502/504, never
the catch-all 500.
(Fixtures: conftest.py in this folder.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.sources.calls import message, register, sha
from tests.support import Answer, free_port, serving

# -- 1. a user's mistake is a 4xx, an unreachable source a 502/504: never the catch-all 500 ----------------------

MALFORMED_HTTP = [
    ("http://[::1/x", "not a valid URL"),
    ("https://[::1/x", "not a valid URL"),
    ("http://[not-an-address]/x", "not a valid URL"),
    ("http://example.com:99999/x.safetensors", "port"),
    ("http://example.com:abc/x.safetensors", "port"),
    ("http://example.com:0/x.safetensors", "port"),
    ("http://" + "a" * 64 + ".example.com/x.safetensors", "host name"),
    ("http://" + "a." * 130 + "com/x.safetensors", "host name"),
    ("https://b\u00fccher" + "a" * 70 + ".example/x.safetensors", "not a valid URL"),
    ("http://exa mple.com/x.safetensors", "host name"),
    ("http:///x.safetensors", "no host"),
    ("http://user@/x.safetensors", "no host"),
    ("http:example.com/x.safetensors", "scheme://"),
    ("http://example.com/" + "a" * 9000, "8,192"),
    ("http://example.com/\x00.safetensors", "control character"),
    ("http://example.com/\ud800.safetensors", "control character"),
]


@pytest.mark.parametrize(("source", "words"), MALFORMED_HTTP)
async def test_a_malformed_http_source_is_422(app, source: str, words: str):
    async with serving(app(adapter_sources="http,https")) as client:
        r = await register(client, source)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert words in message(r), r.text
        metrics = (await client.get("/metrics")).text
        assert 'adaptformer_source_fetches_total{scheme="http' in metrics


async def test_a_malformed_source_of_a_scheme_not_enabled_is_403(app):
    sources = [s for s, _ in MALFORMED_HTTP] + ["file://[::1/x", "s3://[bucket/key", "hf://[::1/x/y"]
    async with serving(app()) as client:  # every scheme off
        for source in sources:
            r = await register(client, source)
            assert r.status_code == 403, (source, r.text)
            assert "ADAPTFORMER_ADAPTER_SOURCES=" in message(r)
        r = await register(client, "ftp://[::1/x")
        assert r.status_code == 422 and "the scheme must be one of" in message(r), r.text


async def test_malformed_file_sources_are_422_and_odd_bytes_name_a_file(app, allowed: Path, data: bytes):
    (allowed / "flowers.safetensors").write_bytes(data)
    os.makedirs(os.fsencode(allowed) + b"/\xff", exist_ok=True)
    Path(os.fsdecode(os.fsencode(allowed) + b"/\xff/flowers.safetensors")).write_bytes(data)
    async with serving(app(adapter_sources="file")) as client:
        for source, words in [
            (f"file://{allowed}/flowers%00.safetensors", "NUL"),
            (f"file://{allowed}/%00", "NUL"),
            (f"file://{allowed}/{'a' * 300}.safetensors", "too long"),
            (f"file://{allowed}/{'%41' * 300}.safetensors", "too long"),
            (f"file://{allowed}/\ud800.safetensors", "control character"),
            (f"file://{allowed}/flowers.safetensors\n", "control character"),
            ("file://[::1/x.safetensors", "not a valid URL"),
            ("file://host:99999/x.safetensors", "not host"),
            ("file:relative.safetensors", "scheme://"),
        ]:
            r = await register(client, source)
            assert r.status_code == 422, (source, r.text)
            assert words in message(r), (source, r.text)
        # percent-encoded bytes name the file by its bytes, UTF-8 or not
        r = await register(client, f"file://{allowed}/%FF/flowers.safetensors", sha256=sha(data))
        assert r.status_code == 201, r.text
        r = await register(client, f"file://{allowed}/%66lowers.safetensors", sha256=sha(data))
        assert r.status_code == 201, r.text


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, bool], None]:
    """Points huggingface_hub at ``endpoint`` with an empty cache (online, or offline)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def point(endpoint: str, offline: bool = False) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    return point


@pytest.mark.parametrize(
    "source",
    [
        "hf://acme corp/adapters/flowers.safetensors",
        "hf://acme/x--y/flowers.safetensors",
        "hf://acme/x..y/flowers.safetensors",
        "hf://-acme/adapters/flowers.safetensors",
        "hf://acme/adapters./flowers.safetensors",
        f"hf://acme/{'r' * 100}/flowers.safetensors",
        "hf://acme/adapters/flowers.safetensors@",
        "hf://acme/adapters/../flowers.safetensors",
        "hf://acme/flowers.safetensors",
    ],
)
@pytest.mark.parametrize("offline", [True, False])
async def test_an_invalid_hub_reference_is_422(app, hub, source: str, offline: bool):
    hub(f"http://127.0.0.1:{free_port()}", offline)  # never reached: the reference is checked first
    async with serving(app(adapter_sources="hf")) as client:
        r = await register(client, source)
        assert r.status_code == 422, r.text
        assert "hf://OWNER/REPO/PATH/FILE.safetensors" in message(r)


async def test_an_unreachable_or_slow_hub_is_502_or_504(app, hub, remotes):
    slow = remotes()
    slow.answers["/acme/adapters/resolve/main/flowers.safetensors"] = Answer(200, delay=3)
    failing = remotes()
    failing.answers["/acme/adapters/resolve/main/flowers.safetensors"] = Answer(500)
    for endpoint, status, words in [
        (f"http://127.0.0.1:{free_port()}", 502, "cannot reach the hub"),
        (failing.url, 502, "hf://acme/adapters/flowers.safetensors"),
        (slow.url, 504, "within 0.5 s"),
    ]:
        hub(endpoint)
        async with serving(app(adapter_sources="hf", source_timeout=0.5)) as client:
            r = await register(client, "hf://acme/adapters/flowers.safetensors")
            assert r.status_code == status, (endpoint, r.text)
            assert words in message(r), r.text
