"""Adapters by reference: POST /adapters with JSON {task, source, sha256} from a local HTTP server this test starts
(good, slow, missing, too large, wrong checksum) and from file:// paths inside and outside the allowed directories.
Every failure leaves the store as it was; what is fetched gets the checks of an upload. The HTTP server is on
loopback, which sources may reach only with ``allow_private_sources`` (tests/reliability/sources/
has the hostile cases)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adaptformer_server import create_app
from adaptformer_server.repository.layout import HISTORY
from tests.support import Answer, Remote, adapter_bytes, image_files, png, serving, upload_files


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    r = Remote()
    yield r
    r.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*.safetensors"))}


async def test_http_source_with_checksum_is_registered_and_served(vit, store, make_settings, remote):
    data = adapter_bytes(vit, "flowers", seed=3)
    remote.serve("/flowers.safetensors", data)
    remote.answers["/chunked/other.safetensors"] = Answer(body=adapter_bytes(vit, "flowers", seed=4), chunked=True)
    settings = make_settings(adapter_sources="http", allow_private_sources=True)  # the remote is on loopback
    async with serving(create_app(settings, backbone=vit)) as client:
        r = await client.post(
            "/adapters", json={"source": f"{remote.url}/flowers.safetensors", "sha256": sha(data).upper()}
        )
        assert r.status_code == 201, r.text
        version = r.json()["adapter"]["version"]
        assert (store / "flowers.safetensors").read_bytes() == data
        assert (await client.post("/predict?task=flowers", files=image_files(png(1)))).json()["version"] == version
        # chunked (no Content-Length), another name, replacing: a new version like an upload
        r = await client.post("/adapters", json={"task": "roses", "source": f"{remote.url}/chunked/other.safetensors"})
        assert r.status_code == 201 and r.json()["adapter"]["task"] == "roses", r.text
        metrics = (await client.get("/metrics")).text
        assert 'adaptformer_source_fetches_total{scheme="http",status="201"} 2.0' in metrics


@pytest.mark.parametrize(
    ("path", "overrides", "status", "words"),
    [
        ("/missing.safetensors", {}, 502, "HTTP 404"),
        ("/slow", {"source_timeout": 0.5}, 504, "within 0.5 s"),
        ("/drip", {"source_timeout": 0.5}, 504, "within 0.5 s"),
        ("/big.safetensors", {"max_upload_bytes": 50000}, 413, "limit is 50,000"),
        ("/chunked/big.safetensors", {"max_upload_bytes": 50000}, 413, "limit is 50,000"),
        ("/junk.safetensors", {}, 422, "safetensors"),
        ("/flowers.safetensors", {"checksum": "0" * 64}, 422, "SHA-256"),
        ("/flowers.safetensors", {"checksum": "abc"}, 422, "64 hex"),
        ("/flowers.safetensors", {"adapter_sources": "file"}, 403, "ADAPTFORMER_ADAPTER_SOURCES=http"),
    ],
)
async def test_http_source_failures_leave_the_store_unchanged(
    vit, store, make_settings, remote, path, overrides, status, words
):
    remote.serve("/flowers.safetensors", adapter_bytes(vit, "flowers", seed=3))
    remote.serve("/big.safetensors", b"\0" * 200_000)
    remote.answers["/chunked/big.safetensors"] = Answer(body=b"\0" * 200_000, chunked=True)
    remote.serve("/junk.safetensors", b"not an adapter at all")
    remote.answers["/slow"] = Answer(404, delay=3)  # answers after the source timeout
    remote.answers["/drip"] = Answer(body=b"x" * 100_000, drip=0.1)  # 10 bytes every 0.1 s
    checksum = overrides.pop("checksum", None)
    settings = make_settings(**{"adapter_sources": "http", "allow_private_sources": True, **overrides})
    async with serving(create_app(settings, backbone=vit)) as client:
        await client.post("/adapters", **upload_files(adapter_bytes(vit, "flowers", seed=1)))
        before = snapshot(store)
        body = {"task": "flowers", "source": remote.url + path}
        if checksum is not None:
            body["sha256"] = checksum
        start = time.perf_counter()
        r = await client.post("/adapters", json=body)
        assert time.perf_counter() - start < 10
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"]
        assert snapshot(store) == before
        assert len((await client.get("/adapters/flowers/versions")).json()["versions"]) == 1


async def test_file_source_inside_the_allowed_directory_only(vit, store, make_settings, allowed, tmp_path):
    data = adapter_bytes(vit, "flowers", seed=3)
    (allowed / "flowers.safetensors").write_bytes(data)
    (allowed / "sub").mkdir()
    (allowed / "sub" / "deep.safetensors").write_bytes(data)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(data)
    (allowed / "link.safetensors").symlink_to(outside)
    settings = make_settings(adapter_sources="file", adapter_source_dirs=str(allowed))
    async with serving(create_app(settings, backbone=vit)) as client:
        r = await client.post(
            "/adapters", json={"source": f"file://{allowed}/flowers.safetensors", "sha256": sha(data)}
        )
        assert r.status_code == 201, r.text
        r = await client.post("/adapters", json={"task": "deep", "source": f"file://{allowed}/sub/deep.safetensors"})
        assert r.status_code == 201, r.text
        before = snapshot(store)
        for source, status in [
            (f"file://{outside}", 403),
            (f"file://{allowed}/../outside.safetensors", 403),
            (f"file://{allowed}/link.safetensors", 403),  # a link inside pointing outside
            (f"file://{allowed}/missing.safetensors", 404),
            (f"file://{allowed}", 404),
            ("file://otherhost/x.safetensors", 422),
            ("ftp://example.com/x.safetensors", 422),
            (f"http://127.0.0.1:9/{allowed}", 403),  # http is not enabled here
        ]:
            r = await client.post("/adapters", json={"task": "other", "source": source})
            assert r.status_code == status, (source, r.text)
        assert snapshot(store) == before
        assert not (store / HISTORY / "other").exists()


async def test_file_sources_are_off_by_default_and_json_is_checked(vit, store, make_settings, allowed):
    (allowed / "flowers.safetensors").write_bytes(adapter_bytes(vit, "flowers", seed=3))
    async with serving(create_app(make_settings(adapter_source_dirs=str(allowed)), backbone=vit)) as client:
        r = await client.post("/adapters", json={"source": f"file://{allowed}/flowers.safetensors"})
        assert r.status_code == 403 and "ADAPTFORMER_ADAPTER_SOURCES=file" in r.json()["error"]["message"]
        r = await client.post("/adapters", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "by reference" in r.json()["error"]["message"]
        r = await client.post("/adapters", json={"task": "x"})
        assert r.status_code == 422 and "source" in r.text
        assert snapshot(store) == {}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache, offline: huggingface_hub answers from it and never opens a connection."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_file(cache: Path, repo: str, path: str, data: bytes, commit: str, ref: str | None = "main") -> None:
    """Lays a file out as the hub's cache does: snapshots/<commit>/<path>, refs/<ref> naming the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    target = root / "snapshots" / commit / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)


async def test_hf_source_from_the_hub_cache_offline(vit, store, make_settings, hub_cache):
    main, pinned = adapter_bytes(vit, "flowers", seed=3), adapter_bytes(vit, "flowers", seed=4)
    cache_file(hub_cache, "acme/adapters", "vit/flowers.safetensors", main, "a" * 40)
    cache_file(hub_cache, "acme/adapters", "vit/flowers.safetensors", pinned, "b" * 40, ref=None)
    async with serving(create_app(make_settings(adapter_sources="hf"), backbone=vit)) as client:
        r = await client.post(
            "/adapters", json={"source": "hf://acme/adapters/vit/flowers.safetensors", "sha256": sha(main)}
        )
        assert r.status_code == 201, r.text
        assert (store / "flowers.safetensors").read_bytes() == main
        r = await client.post("/adapters", json={"source": f"hf://acme/adapters/vit/flowers.safetensors@{'b' * 40}"})
        assert r.status_code == 201 and (store / "flowers.safetensors").read_bytes() == pinned, r.text
        before = snapshot(store)
        for source, status in [
            ("hf://acme/adapters/vit/missing.safetensors", 502),
            ("hf://acme/other/flowers.safetensors", 502),
            (f"hf://acme/adapters/vit/flowers.safetensors@{'c' * 40}", 502),
            ("hf://acme/flowers.safetensors", 422),
        ]:
            r = await client.post("/adapters", json={"task": "flowers", "source": source})
            assert r.status_code == status, (source, r.text)
        r = await client.post(
            "/adapters", json={"source": "hf://acme/adapters/vit/flowers.safetensors", "sha256": "0" * 64}
        )
        assert r.status_code == 422
        assert snapshot(store) == before
