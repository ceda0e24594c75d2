"""Two servers on one store: a version the other server prunes while this one rolls back to it is gone (404 "no
longer kept"), never a 500; concurrent uploads on one server and rollbacks on the other answer only 200, 404 or 409
and leave a store both agree on."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from adaptformer_server import create_app
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import version_of
from adaptformer_server.settings import Settings
from tests.support import adapter_bytes, async_wait_until, serving, upload_files


def settings(store: Path, replica: str, **overrides: object) -> Settings:
    values: dict = {"store": store, "max_wait_ms": 2, "seed_demo": False, "replica_id": replica, "keep_versions": 2}
    values.update(overrides)
    return Settings(**values)


@pytest.mark.parametrize("step", ["read_version", "promote"])
async def test_a_version_pruned_under_a_rollback_is_no_longer_kept(vit, tmp_path, monkeypatch, step):
    """The other server prunes the kept copy between this server's listing and its read (or its promote)."""
    store = tmp_path / "store"
    versions = [adapter_bytes(vit, "cars", seed=s) for s in (1, 2)]
    async with serving(create_app(settings(store, "b"), backbone=vit)) as b:
        for data in versions:
            assert (await b.post("/adapters", **upload_files(data))).status_code == 201
        kept = store / ".history" / "cars" / f"{version_of(versions[0])}.safetensors"
        assert kept.is_file()
        real = getattr(AdapterStore, step)

        def pruned_first(self, task, version):
            kept.unlink(missing_ok=True)  # what another server's prune does at any moment
            return real(self, task, version)

        monkeypatch.setattr(AdapterStore, step, pruned_first)
        r = await b.post("/adapters/cars/rollback", json={"version": version_of(versions[0])})
        assert r.status_code == 404, r.text
        assert "no longer kept" in r.json()["error"]["message"]
        monkeypatch.undo()
        r = await b.get("/adapters/cars")
        assert r.status_code == 200 and r.json()["version"] == version_of(versions[1])  # nothing changed


async def test_uploads_on_one_server_and_rollbacks_on_the_other_never_fail(vit, tmp_path):
    store = tmp_path / "store"
    versions = [adapter_bytes(vit, "cars", seed=s) for s in range(1, 13)]
    statuses: list[int] = []
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(serving(create_app(settings(store, "a"), backbone=vit)))
        b = await stack.enter_async_context(serving(create_app(settings(store, "b", store_poll_ms=20), backbone=vit)))
        assert (await a.post("/adapters", **upload_files(versions[0]))).status_code == 201

        async def uploads() -> None:
            for data in versions[1:]:
                r = await a.post("/adapters", **upload_files(data))
                assert r.status_code == 201, r.text

        async def rollbacks() -> None:
            for _ in range(30):
                r = await b.post("/adapters/cars/rollback")
                statuses.append(r.status_code)
                await asyncio.sleep(0)

        await asyncio.gather(uploads(), rollbacks())
        assert set(statuses) <= {200, 404, 409}, statuses

        async def agree() -> bool:
            va, vb = (
                (await a.get("/adapters/cars")).json()["version"],
                (await b.get("/adapters/cars")).json()["version"],
            )
            return va == vb == version_of((store / "cars.safetensors").read_bytes())

        await async_wait_until(agree, "both servers serve the store's current version")
