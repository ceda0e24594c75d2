"""The store is the source of truth: restarts, half-written files, corrupt files, thousands of adapters, demos."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time

from adaptformer_server import create_app
from adaptformer_server.repository.files import HOST
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import version_of
from tests.support import adapter_bytes, image_files, png, serving, tiny_vit, upload_files


async def test_uploads_survive_a_restart(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        up = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=4)))
        version = up.json()["adapter"]["version"]
        before = (await client.post("/predict?task=cars", files=image_files(png(1)))).json()
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        info = (await client.get("/adapters/cars")).json()
        assert info["version"] == version and info["resident"] is False  # paged in on first use
        after = (await client.post("/predict?task=cars", files=image_files(png(1)))).json()
        assert after["version"] == version
        assert after["predictions"] == before["predictions"]
        assert (await client.get("/adapters/cars")).json()["resident"] is True


async def test_half_written_and_corrupt_files_are_never_loaded(vit, tasks_store, make_settings, caplog):
    good = (tasks_store / "alpha.safetensors").read_bytes()
    (tasks_store / ".cars.safetensors.k2j3h4.tmp").write_bytes(good[: len(good) // 2])  # crash during atomic_write
    os.utime(tasks_store / ".cars.safetensors.k2j3h4.tmp", (time.time() - 3600, time.time() - 3600))
    (tasks_store / ".live.safetensors.x9y8z7.tmp").write_bytes(good[:100])  # another host's server writing now
    (tasks_store / f".mine.safetensors.{HOST}-{os.getpid()}-k2j3.tmp").write_bytes(good[:100])  # this process
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tasks_store / f".dead.safetensors.{HOST}-{gone.pid}-k2j3.tmp").write_bytes(good[:100])  # a killed server's
    (tasks_store / "half.safetensors").write_bytes(good[: len(good) // 2])  # header intact, tensors cut
    (tasks_store / "stub.safetensors").write_bytes(good[:20])  # header cut
    (tasks_store / "junk.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    (tasks_store / "alien.safetensors").write_bytes(adapter_bytes(tiny_vit(seed=9), "alien"))
    (tasks_store / "bad name!.safetensors").write_bytes(good)
    (tasks_store / "notes.txt").write_text("not an adapter")
    caplog.set_level(logging.WARNING)
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        tasks = [a["task"] for a in (await client.get("/adapters")).json()["adapters"]]
        assert tasks == ["alpha", "beta", "clip"]
        # the old leftover and the dead process's go; a young one may be a write in progress (another host's,
        # or a process on this host that is alive)
        left = sorted(p.name for p in tasks_store.glob(".*.tmp"))
        assert left == [".live.safetensors.x9y8z7.tmp", f".mine.safetensors.{HOST}-{os.getpid()}-k2j3.tmp"]
        for name in ("half", "stub", "junk", "alien", "bad name!"):
            assert f"skipping {name}.safetensors" in caplog.text, name
        assert "truncated" in caplog.text and "fingerprint" in caplog.text
        assert (await client.post("/predict?task=half", files=image_files(png(1)))).status_code == 404
        assert (await client.post("/predict?task=alpha", files=image_files(png(1)))).status_code == 200


async def test_file_damaged_after_start_gives_4xx_not_500(vit, tasks_store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        # same header, same length, but the bytes changed behind the server's back: the version no longer
        # exists, and a file that cannot be paged in is reported, not served
        data = bytearray((tasks_store / "beta.safetensors").read_bytes())
        data[-4:] = b"\xff\xff\xff\x7f"  # a NaN in the last tensor
        (tasks_store / "beta.safetensors").write_bytes(bytes(data))
        client_app = client._transport.app  # type: ignore[attr-defined]
        adapters = client_app.state.adapters
        entry = adapters.entry("beta")
        adapters.registry.put(type(entry)(entry.task, version_of(bytes(data)), entry.size_bytes, entry.header))
        r = await client.post("/predict?task=beta", files=image_files(png(1)))
        assert r.status_code == 422 and "POST /adapters" in r.json()["error"]["message"]
        assert (await client.post("/predict?task=alpha", files=image_files(png(1)))).status_code == 200


async def test_thousand_adapters_with_few_slots_page_in_lru(vit, store, make_settings):
    data = adapter_bytes(vit, "many", seed=8)
    for i in range(1000):
        (store / f"t{i:04d}.safetensors").write_bytes(data)
    app = create_app(make_settings(slots=3), backbone=vit)
    async with serving(app) as client:
        assert (await client.get("/readyz")).json()["adapters"] == 1000
        runtime = app.state.runtime
        answers = []
        for task in ["t0001", "t0500", "t0999", "t0001", "t0042", "t0500"]:
            r = await client.post(f"/predict?task={task}", files=image_files(png(3)))
            assert r.status_code == 200
            answers.append(r.json()["predictions"])
        assert all(a == answers[0] for a in answers)  # the same file under many names
        # t0001, t0500, t0999 paged in; t0001 hit; t0042 evicts t0500 (LRU); t0500 paged in again
        assert runtime.metrics.page_ins._value.get() == 5
        assert runtime.metrics.evictions._value.get() == 2
        resident = {a["task"] for a in (await client.get("/adapters")).json()["adapters"] if a["resident"]}
        assert resident == {"t0001", "t0042", "t0500"}
        text = (await client.get("/metrics")).text
        assert "adaptformer_page_ins_total 5.0" in text and "adaptformer_resident_adapters 3.0" in text


def test_versions_are_cached_and_refreshed(vit, store):
    data = adapter_bytes(vit, "a", seed=1)
    (store / "a.safetensors").write_bytes(data)
    s = AdapterStore(store)
    assert [(f.task, f.version) for f in s.scan()] == [("a", version_of(data))]
    assert (store / ".index.json").exists()
    newer = adapter_bytes(vit, "a", seed=2)
    s.write("a", newer)  # a new inode and mtime: the cache entry no longer applies
    assert [f.version for f in s.scan()] == [version_of(newer)]


async def test_demo_adapters_seeded_once(vit, store, make_settings, tmp_path, monkeypatch):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "shirts.safetensors").write_bytes(adapter_bytes(vit, "shirts", seed=1))
    (demo / "digits.safetensors").write_bytes(adapter_bytes(vit, "digits", seed=2))
    (demo / "foreign.safetensors").write_bytes(adapter_bytes(tiny_vit(seed=5), "foreign"))
    monkeypatch.setattr("adaptformer_server.services.adapters.demo_files", lambda: sorted(demo.glob("*.safetensors")))
    async with serving(create_app(make_settings(seed_demo=True), backbone=vit)) as client:
        tasks = [a["task"] for a in (await client.get("/adapters")).json()["adapters"]]
        assert tasks == ["digits", "shirts"]  # the foreign backbone's demo is left out
        assert (await client.delete("/adapters/shirts")).status_code == 200
    assert (store / ".seeded").exists()
    async with serving(create_app(make_settings(seed_demo=True), backbone=vit)) as client:
        tasks = [a["task"] for a in (await client.get("/adapters")).json()["adapters"]]
        assert tasks == ["digits"]  # a deleted demo stays deleted
    empty = tmp_path / "empty"
    shutil.copytree(demo, empty / "d")
    async with serving(create_app(make_settings(seed_demo=False, store=empty / "s"), backbone=vit)) as client:
        assert (await client.get("/adapters")).json()["adapters"] == []
