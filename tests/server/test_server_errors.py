"""Every error status of the contract, as JSON with a useful message; the server answers normally after each."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest
import torch

from adaptformer.adapter_file import task_to_bytes
from adaptformer_server import create_app
from tests.support import (
    adapter_bytes,
    async_wait_until,
    held_request,
    image_files,
    make_task,
    png,
    serving,
    tiny_vit,
    upload_files,
)


async def healthy(client: httpx.AsyncClient) -> None:
    r = await client.post("/predict?task=alpha", files=image_files(png(0)))
    assert r.status_code == 200, r.text


def check_error(r: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w.lower() in err["message"].lower(), (w, err["message"])
    return err


async def test_400_invalid_input(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    frames = image_files(*(png(i) for i in range(4)), field="frame")
    cases = [
        ({"params": {"task": "alpha"}, "files": image_files(b"definitely not an image")}, ["not a readable image"]),
        ({"params": {"task": "alpha"}, "files": image_files(png(1)[:60])}, []),  # truncated PNG
        ({"params": {"task": "alpha"}, "files": frames}, ["image task", "frame"]),
        ({"params": {"task": "clip"}, "files": frames[:3]}, ["4 frames", "got 3"]),
        ({"params": {"task": "clip"}, "files": image_files(png(1))}, ["4 frames", "got 1"]),
        ({"params": {"task": "clip"}, "files": image_files(png(1), png(2))}, ["one clip"]),
        ({"params": {"task": "alpha", "top_k": 0}}, ["top_k"]),
        ({"params": {"task": "alpha", "top_k": "many"}}, ["top_k"]),
        ({"params": {}}, ["task"]),
        ({"params": {"task": "../etc/passwd"}}, ["not a valid task name"]),
        ({"params": {"task": "alpha"}, "files": {"other": ("x.png", png(1))}}, ["`image`"]),
        ({"params": {"task": "alpha"}, "files": image_files(png(1)) + frames}, ["not both"]),
        ({"params": {"task": "alpha"}, "data": {"image": "text, not a file"}, "files": {"x": ("x", b"")}}, ["file"]),
        ({"params": {"task": "alpha"}, "content": b"", "headers": {"Content-Type": "image/png"}}, ["empty"]),
        ({"params": {"task": "alpha"}, "content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}}, []),
    ]
    async with serving(app) as client:
        for kwargs, words in cases:
            r = await client.post("/predict", **kwargs)
            check_error(r, 400, "invalid_input", *words)
            await healthy(client)


async def test_401_403_auth(vit, tasks_store, make_settings):
    app = create_app(make_settings(api_keys="k1, k2", admin_key="root"), backbone=vit)
    adapter = adapter_bytes(vit, "cars")
    async with serving(app) as client:
        r = await client.post("/predict?task=alpha", files=image_files(png(1)))
        check_error(r, 401, "unauthorized", "Bearer")
        assert r.headers["WWW-Authenticate"] == "Bearer"
        check_error(await client.get("/adapters"), 401, "unauthorized")
        check_error(await client.get("/adapters", headers={"Authorization": "Bearer nope"}), 403, "forbidden")
        check_error(await client.post("/adapters", **upload_files(adapter)), 401, "unauthorized", "admin")
        predict_key = {"Authorization": "Bearer k2"}
        r = await client.post("/adapters", headers=predict_key, **upload_files(adapter))
        check_error(r, 403, "forbidden", "admin key")
        check_error(await client.delete("/adapters/alpha", headers={"X-API-Key": "k1"}), 403, "forbidden")

        ok = await client.post("/predict?task=alpha", headers={"X-API-Key": "k1"}, files=image_files(png(1)))
        assert ok.status_code == 200
        assert (await client.get("/adapters/alpha", headers={"Authorization": "Bearer root"})).status_code == 200
        up = await client.post("/adapters", headers={"Authorization": "Bearer root"}, **upload_files(adapter))
        assert up.status_code == 201
        assert (await client.get("/healthz")).status_code == 200  # health and metrics stay open
        assert (await client.get("/metrics")).status_code == 200


async def test_403_admin_off_loopback_without_key(vit, tasks_store, make_settings):
    app = create_app(make_settings(host="0.0.0.0"), backbone=vit)
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars")))
        check_error(r, 403, "forbidden", "ADAPTFORMER_ADMIN_KEY")
        check_error(await client.delete("/adapters/alpha"), 403, "forbidden", "ADAPTFORMER_ADMIN_KEY")
        await healthy(client)


async def test_404_not_found(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        check_error(
            await client.post("/predict?task=nope", files=image_files(png(1))), 404, "not_found", "GET /adapters"
        )
        check_error(await client.get("/adapters/nope"), 404, "not_found")
        check_error(await client.delete("/adapters/nope"), 404, "not_found")
        check_error(await client.get("/no/such/route"), 404, "not_found")
        check_error(await client.put("/predict"), 405, "method_not_allowed")
        await healthy(client)


async def test_409_incompatible_adapter(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    other = tiny_vit(seed=42)
    wider = make_task(tiny_vit(seed=0, embed_dim=32), "wide")
    wider.info.fingerprint = ""  # set below: the right fingerprint, the wrong widths
    bigger = make_task(tiny_vit(seed=0, img_size=64), "big")
    async with serving(app) as client:
        fp = app.state.runtime.backbone.fingerprint
        wider.info.fingerprint = bigger.info.fingerprint = fp
        r = await client.post("/adapters", **upload_files(adapter_bytes(other, "cars")))
        assert check_error(r, 409, "incompatible_adapter", "fingerprint")["check"] == "fingerprint"
        r = await client.post("/adapters", **upload_files(task_to_bytes(wider)))
        assert check_error(r, 409, "incompatible_adapter")["check"] == "shapes"
        r = await client.post("/adapters", **upload_files(task_to_bytes(bigger)))
        assert check_error(r, 409, "incompatible_adapter", "64x64")["check"] == "shapes"
        assert (await client.get("/adapters/cars")).status_code == 404
        await healthy(client)


async def test_409_clip_task_on_backbone_without_clips(make_settings, store):
    flexible = tiny_vit(dynamic_img_size=True)  # no fixed position table: it cannot read clips
    app = create_app(make_settings(), backbone=flexible)
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(adapter_bytes(flexible, "video", clip=True)))
        assert check_error(r, 409, "incompatible_adapter", "clip")["check"] == "modality"
        assert (await client.post("/adapters", **upload_files(adapter_bytes(flexible, "still")))).status_code == 201


async def test_413_limits(vit, tasks_store, make_settings):
    settings = make_settings(
        max_body_bytes=60_000,
        max_images_per_request=3,
        max_parts=6,
        max_image_pixels=50 * 50,
        max_request_pixels=3 * 40 * 40,
        max_frames=5,
        max_upload_bytes=5_000,
    )
    app = create_app(settings, backbone=vit)

    async def chunks():
        for _ in range(20):
            yield b"x" * 10_000

    async with serving(app) as client:
        big = png(7, size=(200, 200))
        assert len(big) > 60_000
        r = await client.post("/predict?task=alpha", content=big, headers={"Content-Type": "image/png"})
        check_error(r, 413, "payload_too_large", "60,000")
        r = await client.post("/predict?task=alpha", content=chunks(), headers={"Content-Type": "image/png"})
        check_error(r, 413, "payload_too_large", "limit")  # no Content-Length: counted while streaming
        check_error(await client.post("/predict?task=alpha", files=image_files(*[png(i) for i in range(4)])), 413,
                    "payload_too_large", "3 images")  # fmt: skip
        parts = image_files(png(1)) + [("note", (None, str(i))) for i in range(6)]
        check_error(await client.post("/predict?task=alpha", files=parts), 413, "payload_too_large", "parts")
        r = await client.post("/predict?task=alpha", files=image_files(png(1, size=(60, 60))))
        check_error(r, 413, "payload_too_large", "pixels")
        frames = image_files(*(png(i, size=(8, 8)) for i in range(6)), field="frame")
        check_error(await client.post("/predict?task=clip", files=frames), 413, "payload_too_large", "frames")
        r = await client.post("/predict?task=alpha", files=image_files(png(1), png(2), png(3, size=(45, 45))))
        check_error(r, 413, "payload_too_large", "pixels")
        r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars")))
        check_error(r, 413, "payload_too_large", "5,000")
        await healthy(client)


async def test_415_unsupported_media_type(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "image/svg+xml"}, {}):
            r = await client.post("/predict?task=alpha", content=b"<svg/>", headers=headers)
            check_error(r, 415, "unsupported_media_type", "multipart/form-data")
        r = await client.post(
            "/adapters", content=adapter_bytes(vit, "cars"), headers={"Content-Type": "application/octet-stream"}
        )
        check_error(r, 415, "unsupported_media_type", "file=@")
        await healthy(client)


async def test_422_invalid_adapter(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    nan = make_task(vit, "nan")
    with torch.no_grad():
        nan.head.weight[0, 0] = math.nan
    unnamed = make_task(vit, "has space")
    async with serving(app) as client:
        cases = [
            (upload_files(b"\x80\x04 pickle bytes, not safetensors"), ["not a safetensors file"]),
            (upload_files(task_to_bytes(nan)), ["NaN"]),
            (upload_files(adapter_bytes(vit, "cars"), task="../escape"), ["invalid task name"]),
            (upload_files(task_to_bytes(unnamed)), ["invalid task name", "`task` form field"]),
            (upload_files(adapter_bytes(vit, "cars")[:-100]), []),
        ]
        for kwargs, words in cases:
            check_error(await client.post("/adapters", **kwargs), 422, "invalid_adapter", *words)
        r = await client.post("/adapters", data={"task": "cars"}, files={"other": ("x", b"x")})
        check_error(r, 422, "validation_error", "`file`")
        assert [a["task"] for a in (await client.get("/adapters")).json()["adapters"]] == ["alpha", "beta", "clip"]
        assert sorted(p.name for p in tasks_store.iterdir() if not p.name.startswith(".")) == [
            "alpha.safetensors",
            "beta.safetensors",
            "clip.safetensors",
        ]
        await healthy(client)


async def test_503_overloaded_with_retry_after(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_batch_size=1, queue_size=1), backbone=vit)
    async with serving(app) as client:
        batcher = app.state.inference.batcher
        # the first request is in the (blocked) forward pass
        first, gate = await held_request(app, client, "/predict?task=alpha", files=image_files(png(1)))
        second = asyncio.create_task(client.post("/predict?task=beta", files=image_files(png(2))))

        async def queued() -> bool:
            return batcher.depth >= 1

        await async_wait_until(queued, "the second request in the queue")
        r = await client.post("/predict?task=alpha", files=image_files(png(3)))
        check_error(r, 503, "overloaded", "Retry-After")
        assert int(r.headers["Retry-After"]) >= 1
        gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
        await healthy(client)


async def test_503_not_ready_while_loading(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:  # no lifespan yet
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = await client.post("/predict?task=alpha", files=image_files(png(1)))
        check_error(r, 503, "not_ready", "loading")
        assert "Retry-After" in r.headers
        check_error(await client.get("/adapters"), 503, "not_ready")
        assert (await client.get("/healthz")).status_code == 200


async def test_bug_gives_logged_json_500_and_server_recovers(vit, tasks_store, make_settings, caplog):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        batcher = app.state.inference.batcher
        run = batcher.run

        def broken(*args):
            raise RuntimeError("simulated engine bug")

        batcher.run = broken
        r = await client.post("/predict?task=alpha", files=image_files(png(1)))
        check_error(r, 500, "internal_error", "bug")
        assert "simulated engine bug" in caplog.text
        batcher.run = lambda *args: run(*args)[:-1] or [None]  # one output short: must fail loudly, not misalign
        r = await client.post("/predict?task=alpha", files=image_files(png(1), png(2)))
        assert r.status_code == 500
        assert "outputs for a batch of 2" in caplog.text
        batcher.run = run
        await healthy(client)


@pytest.mark.parametrize("route", ["/predict?task=alpha", "/adapters"])
async def test_content_length_checked_before_reading(vit, tasks_store, make_settings, route):
    app = create_app(make_settings(max_body_bytes=20_000, max_upload_bytes=20_000), backbone=vit)
    async with serving(app) as client:
        headers = {"Content-Type": "image/png", "Content-Length": str(10**9)}
        r = await client.post(route, content=b"x" * 10, headers=headers)
        check_error(r, 413, "payload_too_large", "1,000,000,000")
        await healthy(client)
