"""Replacing a task while requests stream: every answer comes from exactly one version, whole."""

from __future__ import annotations

import asyncio

from adaptformer_server import create_app
from tests.support import (
    adapter_bytes,
    async_wait_until,
    held_request,
    image_files,
    png,
    serving,
    upload_files,
)

# Version i of the task makes class i win on every input, so an answer names the version it came from.
VERSIONS = 3


async def test_replace_under_load(vit, store, make_settings):
    files = [adapter_bytes(vit, "swap", seed=20 + i, winner=i) for i in range(VERSIONS)]
    app = create_app(make_settings(max_batch_size=8, max_wait_ms=3), backbone=vit)
    async with serving(app) as client:
        version_of_class: dict[str, str] = {}
        up = await client.post("/adapters", **upload_files(files[0]))
        version_of_class["swap-0"] = up.json()["adapter"]["version"]
        answers: list[tuple[str, str]] = []
        stop = asyncio.Event()

        async def stream(worker: int) -> None:
            i = 0
            while not stop.is_set():
                r = await client.post("/predict?task=swap&top_k=1", files=image_files(png(worker * 1000 + i)))
                assert r.status_code == 200, r.text
                body = r.json()
                answers.append((body["version"], body["predictions"][0][0]["label"]))
                i += 1

        def answered_by(i: int, n: int = 5):
            async def enough() -> bool:  # the streams got answers from version i (they keep running meanwhile)
                for worker in workers:
                    if worker.done():
                        worker.result()  # a failed stream fails the test now, with its own error
                return sum(label == f"swap-{i}" for _, label in answers) >= n

            return enough

        workers = [asyncio.create_task(stream(w)) for w in range(6)]
        for i in range(1, VERSIONS):
            await async_wait_until(answered_by(i - 1), f"answers from version {i - 1} under load")
            up = await client.post("/adapters", **upload_files(files[i]))
            assert up.status_code == 201 and up.json()["replaced"] is True
            version_of_class[f"swap-{i}"] = up.json()["adapter"]["version"]
        await async_wait_until(answered_by(VERSIONS - 1), f"answers from version {VERSIONS - 1} under load")
        stop.set()
        await asyncio.gather(*workers)

    assert len(answers) > 20
    for version, label in answers:
        assert version_of_class[label] == version, (version, label)
    seen = {label for _, label in answers}
    assert seen == {f"swap-{i}" for i in range(VERSIONS)}, seen


async def test_request_in_flight_finishes_on_its_version(vit, store, make_settings):
    old, new = adapter_bytes(vit, "swap", seed=1, winner=0), adapter_bytes(vit, "swap", seed=2, winner=1)
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        v_old = (await client.post("/adapters", **upload_files(old))).json()["adapter"]["version"]
        pending, gate = await held_request(app, client, "/predict?task=swap", files=image_files(png(1)))
        # replaced, then deleted, while the request is in the forward pass
        v_new = (await client.post("/adapters", **upload_files(new))).json()["adapter"]["version"]
        assert (await client.delete("/adapters/swap")).status_code == 200
        gate.set()
        r = await pending
        assert r.status_code == 200
        assert r.json()["version"] == v_old and r.json()["predictions"][0][0]["label"] == "swap-0"
        assert v_new != v_old
        assert (await client.post("/predict?task=swap", files=image_files(png(1)))).status_code == 404
