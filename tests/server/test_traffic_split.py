"""Traffic splits between kept versions of one task: weights, stickiness, promote/abort under load, the store."""

from __future__ import annotations

import asyncio
import math
from contextlib import AsyncExitStack

import httpx

from adaptformer_server import create_app
from adaptformer_server.repository.split import SPLITS, Split, session_point
from tests.support import (
    ServerProcess,
    adapter_bytes,
    async_wait_until,
    embedded_backbone,
    image_files,
    png,
    serving,
    upload_files,
)


async def predict(client, task: str = "cars", session: str | None = None):
    headers = {"X-Session-ID": session} if session is not None else {}
    return await client.post(f"/predict?task={task}", files=image_files(png(1)), headers=headers)


async def two_versions(client, vit) -> tuple[str, str]:
    """Uploads two versions of ``cars``: (the older one, the current one)."""
    versions = []
    for seed in (1, 2):
        r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=seed)))
        assert r.status_code == 201, r.text
        versions.append(r.json()["adapter"]["version"])
    return versions[0], versions[1]


async def put_split(client, weights: dict, task: str = "cars"):
    return await client.put(f"/adapters/{task}/split", json={"versions": weights})


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


async def many(client, n: int, concurrency: int = 32, **kw) -> list[dict]:
    out: list[dict] = []

    async def worker(k: int) -> None:
        for _ in range(k):
            r = await predict(client, **kw)
            assert r.status_code == 200, r.text
            out.append(r.json())

    share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    await asyncio.gather(*(worker(k) for k in share))
    return out


async def test_split_shares_requests_within_binomial_bounds(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        old, new = await two_versions(client, vit)
        r = await put_split(client, {old: 0.9, new: 0.1})
        assert r.status_code == 200, r.text
        assert r.json() == {"task": "cars", "current": new, "active": True, "versions": {old: 0.9, new: 0.1}}
        answers = await many(client, 3000)
        served = [a["version"] for a in answers]
        assert set(served) == {old, new}
        assert within(served.count(new), 3000, 0.1), served.count(new)
        # pins override the split; the /v2 answer names the version chosen
        assert {(await predict(client, f"cars@{new}")).json()["version"] for _ in range(20)} == {new}
        v2 = set()
        for _ in range(60):
            body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]}
            res = await client.post("/v2/models/cars/infer", json=body)
            assert res.status_code == 200, res.text
            v2.add(res.json()["model_version"])
        assert v2 == {old, new}
        metrics = (await client.get("/metrics")).text
        assert f'adaptformer_version_requests_total{{status="200",task="cars",version="{old}"}}' in metrics
        # one top-1 score per image answered, under the version that answered it; a softmax top-1 of 4 classes
        # lies in [1/4, 1]
        scored = {
            v: sample(metrics, "adaptformer_version_top1_score_count", task="cars", version=v) for v in (old, new)
        }
        assert scored[old] >= served.count(old) and scored[new] >= served.count(new) + 20, scored
        assert scored[old] + scored[new] == 3000 + 20 + 60, scored
        for v in (old, new):
            total = sample(metrics, "adaptformer_version_top1_score_sum", task="cars", version=v)
            assert 0.25 <= total / scored[v] <= 1.0, (v, total, scored[v])
            below_one = sample(metrics, "adaptformer_version_top1_score_bucket", task="cars", version=v, le="0.99")
            assert below_one <= scored[v]


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the one series of ``name`` with exactly ``labels`` in a Prometheus text exposition."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f"{name}{{") and ",".join(sorted(line[len(name) + 1 : line.index("}")].split(","))) == want
    ]
    assert len(values) == 1, (name, labels, values)
    return values[0]


async def test_a_session_keeps_its_version_and_sessions_spread_by_weight(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        old, new = await two_versions(client, vit)
        assert (await put_split(client, {old: 0.7, new: 0.3})).status_code == 200
        sessions = [f"user-{i}" for i in range(200)]
        first = {}
        for s in sessions:
            first[s] = (await predict(client, session=s)).json()["version"]
        split = Split("cars", ((old, 0.7), (new, 0.3)))
        assert all(first[s] == split.choose(session_point("cars", s)) for s in sessions)
        assert within(sum(v == new for v in first.values()), 200, 0.3)
        for s in sessions[:40]:  # the same id, again and again: the same version
            assert {(await predict(client, session=s)).json()["version"] for _ in range(3)} == {first[s]}
        # raising the last version's weight keeps every caller it had
        assert (await put_split(client, {old: 0.5, new: 0.5})).status_code == 200
        for s in sessions:
            if first[s] == new:
                assert (await predict(client, session=s)).json()["version"] == new


async def test_promote_and_abort_under_load_lose_nothing(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        old, new = await two_versions(client, vit)
        stop = asyncio.Event()
        seen: list[tuple[int, str]] = []

        async def stream() -> None:
            while not stop.is_set():
                r = await predict(client)
                seen.append((r.status_code, r.json().get("version", r.text)))

        streams = [asyncio.create_task(stream()) for _ in range(6)]
        for _ in range(2):
            assert (await put_split(client, {old: 0.5, new: 0.5})).status_code == 200
            await asyncio.sleep(0.1)
            r = await client.delete("/adapters/cars/split")
            assert r.status_code == 200 and r.json()["active"] is False and r.json()["versions"] == {new: 1.0}
            await asyncio.sleep(0.05)
        assert (await put_split(client, {old: 0.5, new: 0.5})).status_code == 200
        await asyncio.sleep(0.1)
        r = await client.post("/adapters/cars/split/promote", json={"version": old})
        assert r.status_code == 200, r.text
        assert r.json()["adapter"]["version"] == old and r.json()["previous_version"] == new
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*streams)
        assert len(seen) > 20
        assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
        assert {v for _, v in seen} == {old, new}
        assert (await client.get("/adapters/cars/split")).json() == {
            "task": "cars", "current": old, "active": False, "versions": {old: 1.0}
        }  # fmt: skip
        assert {(await predict(client)).json()["version"] for _ in range(10)} == {old}
        assert not list((store / SPLITS).glob("*.json"))


async def test_the_split_is_in_the_store_and_a_second_app_applies_it(vit, store, make_settings):
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(serving(create_app(make_settings(store_poll_ms=20), backbone=vit)))
        old, new = await two_versions(a, vit)
        assert (await put_split(a, {old: 1.0})).status_code == 200
        assert (store / SPLITS / "cars.json").is_file()
        b = await stack.enter_async_context(serving(create_app(make_settings(store_poll_ms=20), backbone=vit)))
        assert (await b.get("/adapters/cars/split")).json()["versions"] == {old: 1.0}
        assert {(await predict(b)).json()["version"] for _ in range(5)} == {old}
        assert (await b.delete("/adapters/cars/split")).status_code == 200  # B aborts: A sees it

        async def a_serves_current() -> bool:
            return (await predict(a)).json()["version"] == new

        await async_wait_until(a_serves_current, "A sees B's abort")
        assert (await a.get("/adapters/cars/split")).json()["active"] is False


async def test_an_upload_clears_the_split(vit, store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        old, new = await two_versions(client, vit)
        assert (await put_split(client, {old: 0.5, new: 0.5})).status_code == 200
        r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=3)))
        third = r.json()["adapter"]["version"]
        assert (await client.get("/adapters/cars/split")).json() == {
            "task": "cars", "current": third, "active": False, "versions": {third: 1.0}
        }  # fmt: skip
        assert {(await predict(client)).json()["version"] for _ in range(10)} == {third}


async def test_bad_splits_are_refused_clearly(vit, store, make_settings):
    key = "k" * 8 + "-admin-0123456789"
    async with serving(create_app(make_settings(admin_key=key, keep_versions=2), backbone=vit)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        versions = []
        for seed in (1, 2, 3):
            r = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=seed)), headers=auth)
            versions.append(r.json()["adapter"]["version"])
        gone, old, new = versions

        async def put(weights, task="cars", headers=auth):
            return await client.put(f"/adapters/{task}/split", json={"versions": weights}, headers=headers)

        assert (await put({old: 0.5, new: 0.5}, headers={})).status_code == 401
        for weights, status, words in [
            ({old: 0.5, new: 0.6}, 400, "sum to 1"),
            ({old: 0.0, new: 1.0}, 400, "> 0"),
            ({old: "x", new: 1.0}, 400, "> 0"),
            ({}, 400, "give the versions"),
            ({"nothex": 1.0}, 400, "not a version"),
            ({gone: 0.5, new: 0.5}, 404, "no longer kept"),
        ]:
            r = await put(weights)
            assert r.status_code == status, (weights, r.text)
            assert words in r.json()["error"]["message"], r.text
        assert (await put({old: 0.5, new: 0.5}, task="nope")).status_code == 404
        r = await client.post("/adapters/cars/split/promote", json={"version": old}, headers=auth)
        assert r.status_code == 409 and "no traffic split" in r.json()["error"]["message"]
        assert (await client.delete("/adapters/cars/split", headers=auth)).status_code == 409
        assert (await put({old: 0.5, new: 0.5})).status_code == 200
        r = await client.post("/adapters/cars/split/promote", json={"version": gone}, headers=auth)
        assert r.status_code == 409 and "not in the split" in r.json()["error"]["message"]
        assert (await client.get("/adapters/cars/split")).json()["active"] is True  # a refusal changes nothing


def test_fronts_and_engine_agree_on_the_split(tmp_path):
    """--workers 2: the version is chosen once, in the front; every front applies the engine's split."""
    vit = embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir()
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--threads", "1"]
    flags += ["--workers", "2", "--log-level", "warning"]
    with ServerProcess(flags, log=tmp_path / "server.log", env={"ADAPTFORMER_MAX_WAIT_MS": "2"}) as server:
        versions = []
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for seed in (1, 2):
                r = http.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=seed)))
                assert r.status_code == 201, r.text
                versions.append(r.json()["adapter"]["version"])
            old, new = versions
            assert http.put("/adapters/cars/split", json={"versions": {old: 0.5, new: 0.5}}).status_code == 200

        def ask(session: str | None = None) -> tuple[str, str]:
            headers = {"X-Session-ID": session} if session else {}
            with httpx.Client(base_url=server.url, timeout=30) as fresh:  # a new connection: any front
                r = fresh.post("/predict?task=cars", files=image_files(png(1)), headers=headers)
            assert r.status_code == 200, r.text
            return r.json()["version"], r.headers["X-AdaptFormer-Replica"]

        answers = [ask() for _ in range(200)]
        served = [v for v, _ in answers]
        assert within(served.count(new), 200, 0.5) and set(served) == {old, new}
        assert len({front for _, front in answers}) == 2  # both fronts chose
        split = Split("cars", ((old, 0.5), (new, 0.5)))
        for s in ("alice", "bob", "carol"):
            got = [ask(s) for _ in range(8)]
            assert {v for v, _ in got} == {split.choose(session_point("cars", s))}
            served += [v for v, _ in got]
        # each front scores what it answered; /metrics sums the fronts
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        for v in (old, new):
            count = sample(metrics, "adaptformer_version_top1_score_count", task="cars", version=v)
            assert count == served.count(v), (v, count, served.count(v))
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.post("/adapters/cars/split/promote", json={"version": old}).status_code == 200
        assert {ask()[0] for _ in range(20)} == {old}
