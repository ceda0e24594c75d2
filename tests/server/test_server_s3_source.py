"""Adapters by s3:// reference, against a local S3-compatible server (moto) on loopback: registered and served,
and a missing key, an object over the limit, a wrong checksum or a malformed reference leave the store unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import server as moto_server

from adaptformer_server import create_app
from tests.support import adapter_bytes, image_files, png, serving, upload_files

BUCKET = "adapters"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A moto S3 server on 127.0.0.1 with an empty bucket; AWS_* variables point every client at it."""
    from tests.support import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*.safetensors"))}


async def test_s3_source_is_registered_and_served(vit, store, make_settings, s3):
    data = adapter_bytes(vit, "flowers", seed=3)
    s3.put_object(Bucket=BUCKET, Key="tasks/flowers.safetensors", Body=data)
    async with serving(create_app(make_settings(adapter_sources="s3"), backbone=vit)) as client:
        body = {"source": f"s3://{BUCKET}/tasks/flowers.safetensors", "sha256": hashlib.sha256(data).hexdigest()}
        r = await client.post("/adapters", json=body)
        assert r.status_code == 201, r.text
        assert (store / "flowers.safetensors").read_bytes() == data
        answer = await client.post("/predict?task=flowers", files=image_files(png(1)))
        assert answer.json()["version"] == r.json()["adapter"]["version"]


@pytest.mark.parametrize(
    ("source", "overrides", "status", "words"),
    [
        (f"s3://{BUCKET}/missing.safetensors", {}, 502, "no such bucket or key"),
        ("s3://no-such-bucket/flowers.safetensors", {}, 502, "no such bucket or key"),
        (f"s3://{BUCKET}/big.safetensors", {"max_upload_bytes": 50000}, 413, "limit is 50,000"),
        (f"s3://{BUCKET}/flowers.safetensors", {"checksum": "0" * 64}, 422, "SHA-256"),
        (f"s3://{BUCKET}", {}, 422, "s3://BUCKET/KEY"),
        (f"s3://[{BUCKET}/flowers.safetensors", {}, 422, "s3://BUCKET/KEY"),  # urlsplit raises: was a 500
        (f"s3://agent:secret@{BUCKET}/flowers.safetensors", {}, 422, "s3://BUCKET/KEY"),
        (f"s3://{BUCKET}/flowers.safetensors", {"adapter_sources": "http"}, 403, "ADAPTFORMER_ADAPTER_SOURCES=s3"),
    ],
)
async def test_s3_failures_leave_the_store_unchanged(vit, store, make_settings, s3, source, overrides, status, words):
    s3.put_object(Bucket=BUCKET, Key="flowers.safetensors", Body=adapter_bytes(vit, "flowers", seed=3))
    s3.put_object(Bucket=BUCKET, Key="big.safetensors", Body=b"\0" * 200_000)
    checksum = overrides.pop("checksum", None)
    async with serving(create_app(make_settings(**{"adapter_sources": "s3", **overrides}), backbone=vit)) as client:
        await client.post("/adapters", **upload_files(adapter_bytes(vit, "flowers", seed=1)))
        before = snapshot(store)
        body = {"task": "flowers", "source": source}
        if checksum is not None:
            body["sha256"] = checksum
        r = await client.post("/adapters", json=body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"], r.text
        assert "secret" not in r.text  # user info is never shown
        assert snapshot(store) == before
