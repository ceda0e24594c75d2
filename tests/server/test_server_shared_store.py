"""Several servers on one store (replicas behind a proxy, Ray Serve): each watches the store, so an upload,
replace or delete through any of them is served by all of them (within about a second: docs/SCALING.md gives the
measured figures; here a wait fails only after a generous bound, and a negative check waits for watcher polls)."""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI

from adaptformer_server import create_app
from adaptformer_server.app import REPLICA_HEADER
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import version_of
from adaptformer_server.repository.watcher import StoreWatcher
from adaptformer_server.settings import Settings
from tests.support import adapter_bytes, async_wait_until, image_files, png, serving, tiny_vit, upload_files


async def predict(client: httpx.AsyncClient, task: str) -> httpx.Response:
    return await client.post(f"/predict?task={task}", files=image_files(png(1)))


async def until(check, what: str = "the change reaches the other server") -> float:
    """Seconds until ``await check()`` is true (printed, not asserted: speed is the benchmark's); fails only after
    the generous bound of :func:`support.async_wait_until`."""
    start = time.perf_counter()
    await async_wait_until(check, what)
    return time.perf_counter() - start


def count_polls(app: FastAPI) -> list[int]:
    """Counts the store polls the app's watcher completes from now on (``[count]``)."""
    adapters = app.state.adapters
    sync, done = adapters.sync_store, [0]

    async def counted() -> int:
        changes = await sync()
        done[0] += 1
        return changes

    adapters.sync_store = counted
    return done


async def polls_pass(done: list[int], n: int = 2) -> None:
    """Waits until the watcher completed ``n`` more polls: at least one began after this call (a negative check
    after it has seen what the watcher saw)."""
    target = done[0] + n

    async def reached() -> bool:
        return done[0] >= target

    await async_wait_until(reached, f"{n} store polls")


async def two_servers(stack: AsyncExitStack, vit, make_settings, **overrides) -> tuple:
    a = await stack.enter_async_context(serving(create_app(make_settings(replica_id="a", **overrides), backbone=vit)))
    b = await stack.enter_async_context(serving(create_app(make_settings(replica_id="b", **overrides), backbone=vit)))
    return a, b


async def test_upload_replace_delete_through_one_server_are_served_by_the_other(vit, store, make_settings):
    async with AsyncExitStack() as stack:
        a, b = await two_servers(stack, vit, make_settings)
        assert (await predict(b, "cars")).status_code == 404

        v1 = adapter_bytes(vit, "cars", seed=4)
        r = await a.post("/adapters", **upload_files(v1))
        assert r.status_code == 201 and r.headers[REPLICA_HEADER] == "a"

        async def b_serves(version: str) -> bool:
            r = await predict(b, "cars")
            return r.status_code == 200 and r.json()["version"] == version

        added = await until(lambda: b_serves(version_of(v1)))
        r = await predict(b, "cars")
        assert r.headers[REPLICA_HEADER] == "b"
        assert r.json()["predictions"] == (await predict(a, "cars")).json()["predictions"]
        assert (await b.get("/adapters/cars")).json()["version"] == version_of(v1)

        # replace: b has v1 resident; it must drop it and serve v2
        v2 = adapter_bytes(vit, "cars", seed=5)
        r = await a.post("/adapters", **upload_files(v2))
        assert r.json()["previous_version"] == version_of(v1)
        replaced = await until(lambda: b_serves(version_of(v2)))
        assert (await predict(b, "cars")).json()["predictions"] == (await predict(a, "cars")).json()["predictions"]

        assert (await a.delete("/adapters/cars")).status_code == 200

        async def b_gone() -> bool:
            return (await predict(b, "cars")).status_code == 404

        deleted = await until(b_gone)
        assert "cars" not in [x["task"] for x in (await b.get("/adapters")).json()["adapters"]]

        # and the other way round: b uploads, a serves
        await b.post("/adapters", **upload_files(v1, task="trucks"))

        async def a_serves() -> bool:
            return (await predict(a, "trucks")).status_code == 200

        await until(a_serves)

        # without waiting for the poll: a replace through a reports the version b wrote, a delete through b
        # finds what a uploaded
        await b.post("/adapters", **upload_files(v2, task="vans"))
        r = await a.post("/adapters", **upload_files(v1, task="vans"))
        assert r.json()["replaced"] is True and r.json()["previous_version"] == version_of(v2)
        await a.post("/adapters", **upload_files(v1, task="buses"))
        assert (await b.delete("/adapters/buses")).status_code == 200
        text = (await b.get("/metrics")).text
        for kind in ("added", "replaced", "removed"):  # counts depend on poll timing: cars at least
            assert f'adaptformer_store_changes_total{{kind="{kind}"}} ' in text, kind
        assert 'adaptformer_store_changes_total{kind="removed"} 0.0' not in text
    print(f"\npropagation: added {added:.3f} s, replaced {replaced:.3f} s, deleted {deleted:.3f} s")


async def test_a_replaced_resident_version_is_paged_in_again_without_a_request(vit, tasks_store, make_settings):
    async with AsyncExitStack() as stack:
        a, b = await two_servers(stack, vit, make_settings, store_poll_ms=50)
        app_b = b._transport.app  # type: ignore[attr-defined]
        assert (await predict(b, "alpha")).status_code == 200
        assert (await b.get("/adapters/alpha")).json()["resident"] is True
        new = adapter_bytes(vit, "alpha", seed=7)
        await a.post("/adapters", **upload_files(new))

        async def hot() -> bool:
            info = (await b.get("/adapters/alpha")).json()
            return info["version"] == version_of(new) and info["resident"]

        await until(hot)  # the task was in use: the new version is made resident before anyone asks
        page_ins = app_b.state.runtime.metrics.page_ins._value.get()
        assert (await predict(b, "alpha")).json()["version"] == version_of(new)
        assert app_b.state.runtime.metrics.page_ins._value.get() == page_ins


async def test_a_stale_page_in_reads_the_store_at_once(vit, tasks_store, make_settings):
    """Without polling (store_poll_ms=0), a request for a version that is gone syncs the store itself."""
    async with serving(create_app(make_settings(store_poll_ms=0), backbone=vit)) as client:
        new = adapter_bytes(vit, "beta", num_classes=3, seed=8, linear=True)
        AdapterStore(tasks_store).write("beta", new)  # another process replaces it; not resident here yet
        r = await predict(client, "beta")
        assert r.status_code == 200 and r.json()["version"] == version_of(new)
        (tasks_store / "beta.safetensors").unlink()
        (tasks_store / "alpha.safetensors").unlink()
        assert (await predict(client, "alpha")).status_code == 404  # gone meanwhile, never a 500
        assert (await client.get("/adapters/alpha")).status_code == 404


async def test_files_changed_by_hand_while_serving(vit, tasks_store, make_settings, caplog):
    caplog.set_level(logging.INFO)
    app = create_app(make_settings(store_poll_ms=50), backbone=vit)
    async with serving(app) as client:
        polls = count_polls(app)
        data = adapter_bytes(vit, "cars", seed=4)
        path = tasks_store / "cars.safetensors"
        path.write_bytes(data[: len(data) // 2])  # a plain `cp` still running
        await polls_pass(polls)
        assert (await predict(client, "cars")).status_code == 404
        with path.open("ab") as f:
            f.write(data[len(data) // 2 :])  # the copy completes

        async def served() -> bool:
            r = await predict(client, "cars")
            return r.status_code == 200 and r.json()["version"] == version_of(data)

        await until(served)

        # a corrupt file and one of another backbone over valid tasks: those tasks go, never a 500
        (tasks_store / "alpha.safetensors").write_bytes(b"\x80\x04not safetensors at all")
        (tasks_store / "beta.safetensors").write_bytes(adapter_bytes(tiny_vit(seed=9), "beta"))
        (tasks_store / "bad name!.safetensors").write_bytes(data)  # ignored: not a task name

        async def both_gone() -> bool:
            return all([(await predict(client, t)).status_code == 404 for t in ("alpha", "beta")])

        await until(both_gone)
        tasks = [x["task"] for x in (await client.get("/adapters")).json()["adapters"]]
        assert tasks == ["cars", "clip"]
        assert "alpha.safetensors: not a safetensors file" in caplog.text and "fingerprint" in caplog.text
        warnings = caplog.text.count("store: alpha.safetensors")
        await polls_pass(polls, 3)
        assert caplog.text.count("store: alpha.safetensors") == warnings  # said once, not at every poll


def test_the_watcher_reads_only_changed_files(vit, store, monkeypatch):
    s = AdapterStore(store)
    for i in range(20):
        s.write(f"t{i:02d}", adapter_bytes(vit, "t", seed=1))
    _, seen = s.scan_stamped()
    watcher = StoreWatcher(s, lambda f: None, seen)
    opened: list[str] = []
    examine = s.examine
    monkeypatch.setattr(s, "examine", lambda task, cached=None: opened.append(task) or examine(task, cached))
    assert watcher.poll() == {} and opened == []
    s.write("t03", adapter_bytes(vit, "t", seed=2))
    s.delete("t07")
    changes = watcher.poll()
    assert opened == ["t03"]
    assert changes["t07"] is None and changes["t03"].version == version_of(s.read("t03"))
    assert set(changes) == {"t03", "t07"}
    assert watcher.poll() == {}


def test_watch_settings_are_checked():
    with pytest.raises(ValueError, match="store_poll_ms"):
        Settings(store_poll_ms=-1)
    with pytest.raises(ValueError, match="replica_id"):
        Settings(replica_id="has spaces")
    assert Settings(store_poll_ms=0).store_poll_ms == 0


async def test_the_replica_header_defaults_to_host_and_pid(vit, store, make_settings):
    import os
    import socket

    async with serving(create_app(make_settings(), backbone=vit)) as client:
        for r in [await client.get("/healthz"), await client.get("/nowhere"), await predict(client, "none")]:
            assert r.headers[REPLICA_HEADER] == f"{socket.gethostname()}:{os.getpid()}"
