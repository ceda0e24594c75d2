"""The KServe v2 model-repository extension: index, load and unload over the registry and the bank."""

from __future__ import annotations

from adaptformer_server import create_app
from tests.support import adapter_bytes, image_files, png, serving, upload_files


async def resident(client, ready: bool = True) -> list[str]:
    r = await client.post("/v2/repository/index", json={"ready": ready})
    assert r.status_code == 200, r.text
    return [m["name"] for m in r.json()]


async def test_index_load_and_unload(vit, tasks_store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        index = (await client.post("/v2/repository/index")).json()
        assert [(m["name"], m["state"]) for m in index] == [("alpha", "READY"), ("beta", "READY"), ("clip", "READY")]
        assert all(len(m["version"]) == 12 for m in index)
        assert await resident(client) == []
        assert (await client.post("/v2/repository/models/beta/load")).json() == {}
        assert await resident(client) == ["beta"]
        assert (await client.post("/predict?task=alpha", files=image_files(png(1)))).status_code == 200
        assert await resident(client) == ["alpha", "beta"]
        assert (await client.post("/v2/repository/models/alpha/unload")).status_code == 200
        assert await resident(client) == ["beta"]
        assert (await client.post("/predict?task=alpha", files=image_files(png(1)))).status_code == 200  # paged in

        r = await client.post("/v2/repository/models/nope/load")
        assert r.status_code == 404 and "unknown task" in r.json()["error"]
        r = await client.post("/v2/repository/index", content=b"[1", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()


async def test_load_a_kept_version(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        first = (await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=1)))).json()
        await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=2)))
        pinned = f"cars@{first['adapter']['version']}"
        adapters = client._transport.app.state.adapters  # type: ignore[attr-defined]
        assert (await client.post(f"/v2/repository/models/{pinned}/load")).status_code == 200
        assert pinned in adapters.resident_adapters
        assert (await client.post(f"/v2/repository/models/{pinned}/unload")).status_code == 200
        assert pinned not in adapters.resident_adapters and adapters.entry("cars").key in adapters.resident_adapters


async def test_load_and_unload_need_the_admin_key(vit, tasks_store, make_settings):
    key = "k" * 8 + "-admin-0123456789"
    async with serving(create_app(make_settings(admin_key=key), backbone=vit)) as client:
        assert (await client.post("/v2/repository/models/alpha/load")).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert (await client.post("/v2/repository/models/alpha/load", headers=auth)).status_code == 200
        assert (await client.post("/v2/repository/models/alpha/unload", headers=auth)).status_code == 200
