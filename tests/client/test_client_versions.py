"""The client's calls for versions and sources: register, versions, download, rollback and pinned predictions,
through Client and AsyncClient, against a fake of those routes whose bodies are the server's own schemas."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from adaptformer_client import NotFoundError, ServerError
from adaptformer_client.cli import main
from adaptformer_server import schemas


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def answer(status: int, model: BaseModel) -> httpx.Response:
    return httpx.Response(status, json=model.model_dump(mode="json"))


def error(status: int, code: str, message: str) -> httpx.Response:
    return answer(status, schemas.ErrorResponse(error=schemas.ErrorDetail(code=code, message=message)))


def adapter_info(task: str, labels: list[str], data: bytes) -> schemas.AdapterInfo:
    spec = schemas.InputInfo(size=28, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", frames=1)
    return schemas.AdapterInfo(
        task=task,
        input=spec,
        version=version_of(data),
        method="adaptformer",
        modality="image",
        frames=1,
        num_classes=len(labels),
        labels=labels,
        params=12_345,
        percent_of_backbone=0.57,
        size_bytes=len(data),
        backbone="embedded-vit",
        fingerprint="f1n9erpr1nt0",
        config=None,
        metrics={},
        created="2026-11-29T07:00:00+00:00",
        resident=True,
    )


class VersionedFake:
    """Keeps the files of one task, ``cars``, oldest first; the last one is current."""

    def __init__(self) -> None:
        self.files = [b"cars v1", b"cars v2", b"cars v3"]
        self.current = 2
        self.requests: list[httpx.Request] = []
        self.corrupt = False

    def info(self, i: int) -> schemas.AdapterInfo:
        return adapter_info("cars", ["a", "b"], data=self.files[i])

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if path == "/adapters" and method == "POST":
            body = json.loads(request.content)
            if body["source"].startswith("ftp:"):
                return error(422, "validation_error", "the scheme must be one of https, http, file")
            self.files.append(body["source"].encode())
            previous, self.current = self.current, len(self.files) - 1
            upload = schemas.UploadResponse(
                adapter=self.info(self.current), replaced=True, previous_version=version_of(self.files[previous])
            )
            return answer(201, upload)
        if path == "/predict":
            task = request.url.params["task"]
            name, _, version = task.partition("@")
            versions = [version_of(f) for f in self.files]
            if name != "cars" or (version and version not in versions):
                return error(404, "not_found", f"no version {version!r}")
            served = version or versions[self.current]
            body = schemas.PredictResponse(
                task="cars", version=served, modality="image", predictions=[[]], latency_ms=1.0
            )
            return answer(200, body)
        if not path.startswith("/adapters/cars"):
            return error(404, "not_found", f"no task in {path}")
        versions = [version_of(f) for f in self.files]
        if path == "/adapters/cars/versions":
            listed = [
                schemas.VersionInfo(
                    version=versions[i],
                    current=i == self.current,
                    size_bytes=len(self.files[i]),
                    stored=f"2026-11-30T17:0{i}:00Z",
                    created="2026-11-29T07:00:00+00:00",
                    metrics={"accuracy": 0.9},
                )
                for i in reversed(range(len(self.files)))
            ]
            body = schemas.VersionList(task="cars", current=versions[self.current], keep=3, versions=listed)
            return answer(200, body)
        if path == "/adapters/cars/file":
            want = request.url.params.get("version", versions[self.current])
            if want not in versions:
                return error(404, "not_found", f"task 'cars' has no version {want!r}")
            data = self.files[versions.index(want)]
            return httpx.Response(200, content=data[:-1] if self.corrupt else data, headers={"X-Adapter-Version": want})
        if path == "/adapters/cars/rollback" and method == "POST":
            body = json.loads(request.content) if request.content else {}
            previous = self.current
            if body.get("version") is None:
                if self.current == 0:
                    return error(404, "not_found", "no version older than the current one")
                self.current -= 1
            elif body["version"] in versions:
                self.current = versions.index(body["version"])
            else:
                return error(404, "not_found", "no such version")
            rolled = schemas.RollbackResponse(
                adapter=self.info(self.current), previous_version=version_of(self.files[previous])
            )
            return answer(200, rolled)
        return error(404, "not_found", f"no route {method} {path}")


@pytest.fixture
def versioned() -> VersionedFake:
    return VersionedFake()


@pytest.fixture
async def call(versioned: VersionedFake, through: Callable[..., Any]) -> AsyncIterator[Callable[..., Any]]:
    """``await call("download", "cars", path)``: one client method on ``versioned``, through Client or AsyncClient."""
    async with through(versioned.handle) as each:
        yield each


async def test_versions_lists_newest_first(call, versioned):
    listed = await call("versions", "cars")
    assert listed.current == version_of(b"cars v3") and listed.keep == 3
    assert [v.version for v in listed.versions] == [version_of(f) for f in reversed(versioned.files)]
    assert [v.current for v in listed.versions] == [True, False, False]
    assert listed.versions[0].metrics == {"accuracy": 0.9}


async def test_download_writes_the_exact_bytes_and_checks_them(call, versioned, tmp_path: Path):
    path = await call("download", "cars", tmp_path / "cars.safetensors")
    assert path.read_bytes() == b"cars v3"
    path = await call("download", "cars", tmp_path, version=version_of(b"cars v1"))
    assert path == tmp_path / "cars.safetensors" and path.read_bytes() == b"cars v1"
    assert versioned.requests[-1].url.params["version"] == version_of(b"cars v1")
    with pytest.raises(NotFoundError):
        await call("download", "cars", tmp_path / "x.safetensors", version="0" * 12)
    versioned.corrupt = True
    with pytest.raises(ServerError, match="download it again"):
        await call("download", "cars", tmp_path / "cut.safetensors")
    assert not (tmp_path / "cut.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cars.safetensors"]  # no temp file left


async def test_pinned_predictions_name_the_version(call):
    pinned = version_of(b"cars v1")
    r = await call("predict", "cars", b"\x89PNG fake", version=pinned)
    assert r.version == pinned
    r = await call("predict_batch", "cars", [b"a", b"b"], version=pinned)
    assert r.version == pinned
    r = await call("predict", "cars", b"\x89PNG fake")
    assert r.version == version_of(b"cars v3")
    with pytest.raises(NotFoundError):
        await call("predict", "cars", b"x", version="0" * 12)


async def test_rollback_default_and_named(call, versioned):
    rolled = await call("rollback", "cars")
    assert rolled.adapter.version == version_of(b"cars v2") and rolled.previous_version == version_of(b"cars v3")
    assert versioned.requests[-1].content == b""  # no body: the server picks the one before
    rolled = await call("rollback", "cars", version_of(b"cars v3"))
    assert rolled.adapter.version == version_of(b"cars v3")
    assert json.loads(versioned.requests[-1].content) == {"version": version_of(b"cars v3")}


async def test_register_sends_the_reference(call, versioned):
    digest = "ab" * 32
    result = await call("register", "cars", source="https://example.com/cars.safetensors", sha256=digest)
    assert result.adapter.version == version_of(b"https://example.com/cars.safetensors") and result.replaced
    sent = versioned.requests[-1]
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.content) == {
        "task": "cars",
        "source": "https://example.com/cars.safetensors",
        "sha256": digest,
    }
    await call("register", source="https://example.com/other.safetensors")
    assert json.loads(versioned.requests[-1].content) == {"source": "https://example.com/other.safetensors"}


def test_a_default_rollback_is_never_resent_but_a_named_one_is(make_client, sleeps):
    tries: list[httpx.Request] = []

    def broken(request: httpx.Request) -> httpx.Response:
        tries.append(request)
        raise httpx.ReadError("connection reset", request=request)

    client = make_client(broken, max_retries=2)
    with pytest.raises(Exception, match="connection"):
        client.rollback("cars")
    assert len(tries) == 1  # the server may have rolled back already: a second try would go one further
    with pytest.raises(Exception, match="connection"):
        client.rollback("cars", "0123456789ab")
    assert len(tries) == 4


def test_cli_versions_download_rollback_register_and_pinned_predict(versioned, tmp_path, capsys, monkeypatch):
    transport = httpx.MockTransport(versioned.handle)
    monkeypatch.chdir(tmp_path)
    assert main(["versions", "cars"], transport=transport) == 0
    out = capsys.readouterr().out
    assert version_of(b"cars v3") in out and "3 versions kept (at most 3)" in out
    assert main(["download", "cars"], transport=transport) == 0
    assert (tmp_path / "cars.safetensors").read_bytes() == b"cars v3"
    assert "saved cars" in capsys.readouterr().out
    assert main(["rollback", "cars"], transport=transport) == 0
    assert f"version {version_of(b'cars v2')} is current" in capsys.readouterr().out
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    assert (
        main(["predict", "--task", "cars", "--version", version_of(b"cars v1"), str(image)], transport=transport) == 0
    )
    assert f"version {version_of(b'cars v1')}" in capsys.readouterr().out
    assert main(["register", "https://example.com/c.safetensors", "--task", "cars"], transport=transport) == 0
    assert "installed cars" in capsys.readouterr().out
    assert main(["register", "ftp://example.com/c.safetensors"], transport=transport) == 1
    assert "scheme" in capsys.readouterr().err
