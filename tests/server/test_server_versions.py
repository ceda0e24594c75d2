"""Versions: the store keeps the last N of each task; pinned predictions, downloads and rollbacks; replicas agree."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack

import httpx

from adaptformer_client import AsyncClient
from adaptformer_server import create_app
from adaptformer_server.repository.layout import HISTORY
from adaptformer_server.repository.names import version_of
from tests.support import adapter_bytes, async_wait_until, image_files, png, serving, upload_files


async def predict(client, task: str):
    return await client.post(f"/predict?task={task}", files=image_files(png(1)))


def same(a: list[list[dict]], b: list[list[dict]]) -> bool:
    """The same top-k answers (labels in order; scores within what batching changes)."""
    pairs = [(x, y) for xs, ys in zip(a, b, strict=True) for x, y in zip(xs, ys, strict=True)]
    return all(x["label"] == y["label"] and abs(x["score"] - y["score"]) < 1e-4 for x, y in pairs)


async def upload_four(client, vit) -> tuple[list[bytes], list[str], list[list]]:
    """Uploads four versions of ``cars``; their bytes, versions and the predictions each gave while current."""
    files, versions, answers = [], [], []
    for seed in range(1, 5):
        data = adapter_bytes(vit, "cars", seed=seed)
        r = await client.post("/adapters", **upload_files(data))
        assert r.status_code == 201, r.text
        files.append(data)
        versions.append(r.json()["adapter"]["version"])
        answer = (await predict(client, "cars")).json()
        assert answer["version"] == versions[-1]
        answers.append(answer["predictions"])
    assert len(set(versions)) == 4
    return files, versions, answers


async def test_last_n_versions_are_kept_listed_downloadable_and_pinnable(vit, store, make_settings):
    async with serving(create_app(make_settings(keep_versions=3), backbone=vit)) as client:
        files, versions, answers = await upload_four(client, vit)
        listed = (await client.get("/adapters/cars/versions")).json()
        assert listed["current"] == versions[3] and listed["keep"] == 3
        assert [v["version"] for v in listed["versions"]] == versions[:0:-1]  # v4, v3, v2: newest first, v1 gone
        assert [v["current"] for v in listed["versions"]] == [True, False, False]
        assert all(v["size_bytes"] == len(files[1]) and v["created"] for v in listed["versions"])
        assert sorted(p.name for p in (store / HISTORY / "cars").iterdir()) == sorted(
            f"{v}.safetensors" for v in versions[1:]
        )

        current = await client.get("/adapters/cars/file")
        assert current.status_code == 200 and current.content == files[3]
        assert current.headers["x-adapter-version"] == versions[3]
        old = await client.get(f"/adapters/cars/file?version={versions[1]}")
        assert old.content == files[1] and version_of(old.content) == versions[1]
        gone = await client.get(f"/adapters/cars/file?version={versions[0]}")
        assert gone.status_code == 404 and "versions" in gone.json()["error"]["message"]

        for i in (1, 2, 3):  # pinned predictions answer from the pinned weights, and name them
            r = (await predict(client, f"cars@{versions[i]}")).json()
            assert r["version"] == versions[i] and r["predictions"] == answers[i]
        assert (await predict(client, f"cars@{versions[0]}")).status_code == 404
        assert (await predict(client, "cars@nothex")).status_code == 400
        both = await client.post(
            f"/predict?task=cars&task=cars@{versions[1]}", files=image_files(png(1))
        )  # current and pinned, one forward pass
        assert [r["version"] for r in both.json()["results"]] == [versions[3], versions[1]]
        assert (await client.get("/adapters/cars")).json()["version"] == versions[3]  # pinning changes nothing
        metrics = (await client.get("/metrics")).text
        assert "cars@" not in metrics  # pinned requests count under their task: no label per version


async def test_rollback_default_and_named_and_its_limits(vit, store, make_settings):
    async with serving(create_app(make_settings(keep_versions=3), backbone=vit)) as client:
        files, versions, answers = await upload_four(client, vit)
        r = await client.post("/adapters/cars/rollback")
        assert r.status_code == 200, r.text
        assert r.json()["adapter"]["version"] == versions[2] and r.json()["previous_version"] == versions[3]
        assert (await client.get("/adapters/cars/file")).content == files[2]
        assert (await predict(client, "cars")).json()["predictions"] == answers[2]
        r = await client.post("/adapters/cars/rollback", json={"version": versions[3]})  # roll forward again
        assert r.json()["adapter"]["version"] == versions[3]
        r = await client.post("/adapters/cars/rollback", json={"version": versions[1]})
        assert r.json()["adapter"]["version"] == versions[1]
        assert (await client.post("/adapters/cars/rollback")).status_code == 404  # nothing older is kept
        assert (await client.post("/adapters/cars/rollback", json={"version": versions[0]})).status_code == 404
        assert (await client.post("/adapters/nope/rollback")).status_code == 404
        listed = (await client.get("/adapters/cars/versions")).json()["versions"]
        assert [v["version"] for v in listed] == versions[:0:-1]  # the order is the order they entered the store
        assert [v["current"] for v in listed] == [False, False, True]

        # a new upload after a rollback: the current one and the newest others stay
        r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=9)))
        listed = (await client.get("/adapters/cars/versions")).json()["versions"]
        assert [v["version"] for v in listed] == [r.json()["adapter"]["version"], versions[3], versions[2]]

        assert (await client.delete("/adapters/cars")).status_code == 200
        assert not (store / HISTORY / "cars").exists()


async def test_rollback_needs_the_admin_key(vit, store, make_settings):
    key = "k" * 8 + "-admin-0123456789"
    async with serving(create_app(make_settings(admin_key=key), backbone=vit)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=1)), headers=auth)
        await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=2)), headers=auth)
        assert (await client.post("/adapters/cars/rollback")).status_code == 401
        assert (await client.post("/adapters/cars/rollback", headers=auth)).status_code == 200


async def test_rollback_while_requests_stream_loses_nothing(vit, store, make_settings):
    async with serving(create_app(make_settings(keep_versions=3), backbone=vit)) as client:
        _, versions, answers = await upload_four(client, vit)
        expected = dict(zip(versions, answers, strict=True))
        stop = asyncio.Event()
        seen: list[dict] = []

        async def stream() -> None:
            while not stop.is_set():
                r = await predict(client, "cars")
                assert r.status_code == 200, r.text
                seen.append(r.json())

        streams = [asyncio.create_task(stream()) for _ in range(4)]
        await asyncio.sleep(0.05)
        for target in (versions[2], versions[1], versions[3], versions[2]):
            r = await client.post("/adapters/cars/rollback", json={"version": target})
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*streams)
        assert len(seen) > 8
        for answer in seen:  # every answer names the version it ran, and is that version's answer
            assert same(answer["predictions"], expected[answer["version"]]), answer["version"]
        assert {a["version"] for a in seen} >= {versions[2], versions[1]}
        assert (await predict(client, "cars")).json()["version"] == versions[2]


async def test_another_replica_sees_a_rollback(vit, store, make_settings):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(serving(create_app(make_settings(store_poll_ms=20), backbone=vit)))
        b = await stack.enter_async_context(serving(create_app(make_settings(store_poll_ms=20), backbone=vit)))
        v1 = (await a.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=1)))).json()["adapter"]
        v2 = (await a.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=2)))).json()["adapter"]

        async def b_serves(version: str) -> bool:
            r = await predict(b, "cars")
            return r.status_code == 200 and r.json()["version"] == version

        await async_wait_until(lambda: b_serves(v2["version"]), "B serves the upload")
        assert (await b.post("/adapters/cars/rollback")).json()["adapter"]["version"] == v1["version"]
        await async_wait_until(lambda: _serves(a, v1["version"]), "A sees B's rollback")
        listed = (await a.get("/adapters/cars/versions")).json()
        assert listed["current"] == v1["version"] and len(listed["versions"]) == 2
        assert (await predict(a, f"cars@{v2['version']}")).json()["version"] == v2["version"]


async def _serves(client, version: str) -> bool:
    r = await predict(client, "cars")
    return r.status_code == 200 and r.json()["version"] == version


async def test_the_client_sdk_against_this_server(vit, store, make_settings, tmp_path):
    settings = make_settings(keep_versions=3, adapter_sources="file", adapter_source_dirs=str(tmp_path))
    app = create_app(settings, backbone=vit)
    async with serving(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://testserver", transport=transport, max_retries=0) as client:
            first = adapter_bytes(vit, "cars", seed=1)
            (tmp_path / "cars.safetensors").write_bytes(first)
            v1 = (await client.upload_adapter(first)).adapter.version
            source = f"file://{tmp_path}/cars2.safetensors"
            (tmp_path / "cars2.safetensors").write_bytes(adapter_bytes(vit, "cars", seed=2))
            digest = hashlib.sha256((tmp_path / "cars2.safetensors").read_bytes()).hexdigest()
            registered = await client.register("cars", source=source, sha256=digest)
            v2 = registered.adapter.version
            assert registered.previous_version == v1
            listed = await client.versions("cars")
            assert [v.version for v in listed.versions] == [v2, v1] and listed.current == v2
            saved = await client.download("cars", tmp_path / "old.safetensors", version=v1)
            assert saved.read_bytes() == first
            assert (await client.predict("cars", png(1), version=v1)).version == v1
            rolled = await client.rollback("cars")
            assert rolled.adapter.version == v1 and rolled.previous_version == v2
            assert (await client.predict("cars", png(1))).version == v1


async def test_hand_copied_files_are_kept_when_replaced_or_rolled_back(vit, store, make_settings):
    v1, v2, v3 = (adapter_bytes(vit, "cars", seed=s) for s in (1, 2, 3))
    (store / "cars.safetensors").write_bytes(v1)  # copied in by hand: no history yet
    app = create_app(make_settings(keep_versions=3, store_poll_ms=0), backbone=vit)
    async with serving(app) as client:
        listed = (await client.get("/adapters/cars/versions")).json()["versions"]
        assert [v["version"] for v in listed] == [version_of(v1)]  # the current file, listed without a copy
        await client.post("/adapters", **upload_files(v2))
        (store / "cars.safetensors").write_bytes(v3)  # another hand copy over the current file
        await app.state.adapters.sync_store()
        r = await client.post("/adapters/cars/rollback", json={"version": version_of(v1)})
        assert r.status_code == 200, r.text
        listed = (await client.get("/adapters/cars/versions")).json()["versions"]
        assert {v["version"] for v in listed} == {version_of(v) for v in (v1, v2, v3)}
        assert (await client.get(f"/adapters/cars/file?version={version_of(v3)}")).content == v3
