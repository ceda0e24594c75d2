"""``adaptformer serve --ray --replicas 2`` on a local Ray cluster (loopback only): requests reach both replicas,
an upload, replace or delete through one is served by both within about a second, and a replica killed under
load is replaced without losing a request beyond the client's retries.

Slow (a Ray cluster and two replicas start): ``make test-ray``; not part of the default run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.ray.ray_support import (
    REPLICA_HEADER,
    Cluster,
    Server,
    demo_file,
    observe_until,
    predict,
    propagation,
    ray_cluster,
    ray_installed,
    ray_server,
    replica_pid,
)
from tests.support import async_wait_until, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")]

CLIENT_RETRIES = 5  # after the first try; backoff 0.2 s doubling (6.2 s in all)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not ray_installed():
        pytest.skip("Ray Serve is not installed: pip install '.[ray]' (make test-ray does)")
    with ray_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    store = tmp_path_factory.mktemp("shared") / "adapters"
    with ray_server(cluster, store, "--replicas", "2", "--max-wait-ms", "2") as server:
        # /readyz answers once one replica serves; Ray's proxy learns of the other a moment later. The tests are
        # about two replicas: wait (bounded) until both have answered.
        seen: set[str] = set()

        def both_answered() -> bool:
            seen.add(httpx.get(f"{server.url}/readyz", timeout=30).headers[REPLICA_HEADER])
            return len(seen) == 2

        wait_until(both_answered, "answers from both replicas through Ray's proxy", timeout=180, interval=0.1)
        yield server


def test_a_replica_that_cannot_start_fails_the_command_with_the_reason(cluster: Cluster, tmp_path: Path) -> None:
    # first: the two-replica app of the other tests (module-scoped) takes the route prefix / when it starts
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--ray", "--ray-address", cluster.address,
           "--port", str(cluster.http_port), "--store", str(tmp_path / "s"), "--weights", str(tmp_path / "missing.pt"),
           "--ray-app-name", "broken"]  # fmt: skip
    done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "weights file not found" in done.stdout + done.stderr


async def test_requests_land_on_both_replicas(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        ready = (await c.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["adapters"] >= 3  # the demo adapters, seeded once
        answers = await asyncio.gather(*(predict(c, "digits", i) for i in range(64)))
    assert [r.status_code for r in answers] == [200] * 64
    replicas = Counter(r.headers[REPLICA_HEADER] for r in answers)
    print(f"\n64 concurrent requests per replica: {dict(replicas)}")
    assert len(replicas) == 2
    assert len({r.json()["version"] for r in answers}) == 1


async def test_a_task_stays_on_the_replica_that_has_it_resident(server: Server) -> None:
    """Task-aware routing (the default): an uploaded task is resident on the replica that took the upload, and its
    first request goes there once the replicas have reported (every second); the requests of one task, one after
    the other, go to one replica; tasks spread over both; many at once for one task still spread (load first)."""
    tasks = [f"sticky{i}" for i in range(12)]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        uploaded_by = {}
        for task in tasks:
            up = await c.post("/adapters", files={"file": ("a.safetensors", demo_file("digits"))}, data={"task": task})
            assert up.status_code == 201, up.text
            uploaded_by[task] = up.headers[REPLICA_HEADER]
        await asyncio.sleep(4.0)  # replicas report their resident tasks every second; the other one polls the store
        answered_by: dict[str, list[str]] = {task: [] for task in tasks}
        for _ in range(4):
            for task in tasks:  # one after the other: no replica is busy
                r = await predict(c, task)
                assert r.status_code == 200, r.text
                answered_by[task].append(r.headers[REPLICA_HEADER])
        many = await asyncio.gather(*(predict(c, tasks[0], i) for i in range(48)))
        for task in tasks:
            assert (await c.delete(f"/adapters/{task}")).status_code == 200
    first_to_uploader = sum(answered_by[t][0] == uploaded_by[t] for t in tasks)
    print(f"\nfirst request on the uploading replica: {first_to_uploader} of {len(tasks)}; answered by {answered_by}")
    assert first_to_uploader >= len(tasks) - 1, (uploaded_by, answered_by)  # by chance alone: half of them
    assert all(len(set(a)) == 1 for a in answered_by.values()), answered_by
    assert len({a[0] for a in answered_by.values()}) == 2, "tasks spread over both replicas"
    assert [r.status_code for r in many] == [200] * 48
    assert len(Counter(r.headers[REPLICA_HEADER] for r in many)) == 2, "a busy replica's task spills to the other"


async def test_upload_replace_delete_are_served_by_every_replica(server: Server) -> None:
    v1, v2 = demo_file("digits"), demo_file("emoji")  # two versions of a task "probe"
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        assert (await predict(c, "probe")).status_code == 404
        results = {}

        up = await c.post("/adapters", files={"file": ("a.safetensors", v1)}, data={"task": "probe"})
        assert up.status_code == 201, up.text
        version1 = up.json()["adapter"]["version"]
        uploaded = lambda s, v: s == 200 and v == version1  # noqa: E731
        results["upload"] = propagation(await observe_until(c, "probe", uploaded), uploaded)

        up = await c.post("/adapters", files={"file": ("a.safetensors", v2)}, data={"task": "probe"})
        assert up.status_code == 201 and up.json()["previous_version"] == version1
        version2 = up.json()["adapter"]["version"]
        replaced = lambda s, v: s == 200 and v == version2  # noqa: E731
        results["replace"] = propagation(await observe_until(c, "probe", replaced), replaced)

        assert (await c.delete("/adapters/probe")).status_code == 200
        deleted = lambda s, v: s == 404  # noqa: E731
        results["delete"] = propagation(await observe_until(c, "probe", deleted), deleted)

    for change, per_replica in results.items():  # how fast is printed (docs/SCALING.md), not asserted
        print(f"\n{change}: {per_replica}")
        assert len(per_replica) == 2, f"{change}: answers came from {list(per_replica)}"
        for replica, r in per_replica.items():
            assert r["fresh_by_s"] is not None, f"{change}: {replica} never served the change"
            assert r["stale_after_fresh"] == 0, f"{change}: {replica} went back to the old state: {r}"


async def test_a_killed_replica_is_replaced_and_no_request_is_lost(server: Server) -> None:
    outcomes: list[dict] = []
    failures: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client(i: int, c: httpx.AsyncClient) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for attempt in range(CLIENT_RETRIES + 1):
                try:
                    r = await predict(c, "digits", i * 10_000 + n)
                    if r.status_code == 200:
                        outcomes.append({"ok": True, "tries": attempt + 1, "replica": r.headers[REPLICA_HEADER],
                                         "t": time.perf_counter()})  # fmt: skip
                        break
                    failures[f"HTTP {r.status_code}"] += 1
                except httpx.TransportError as e:
                    failures[type(e).__name__] += 1
                await asyncio.sleep(0.2 * 2**attempt)
            else:
                outcomes.append({"ok": False, "tries": CLIENT_RETRIES + 1, "replica": None, "t": time.perf_counter()})

    def answering(since: float = 0.0) -> set[str]:
        return {o["replica"] for o in outcomes if o["ok"] and o["t"] > since}

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        loops = [asyncio.create_task(client(i, c)) for i in range(8)]

        async def both_answer() -> bool:
            return len(answering()) == 2

        await async_wait_until(both_answer, "answers from both replicas")
        before = answering()
        victim = sorted(before)[0]
        os.kill(replica_pid(victim), signal.SIGKILL)
        killed_at = time.perf_counter()
        replaced_at = None

        async def replaced() -> bool:
            nonlocal replaced_at
            if answering() - before:
                replaced_at = time.perf_counter()
            return replaced_at is not None

        with contextlib.suppress(AssertionError):  # reported below, with the failures seen
            await async_wait_until(replaced, "a new replica answering", timeout=180, interval=0.2)
        if replaced_at is not None:  # and keep the load on until both replicas answered a while after it

            async def two_after() -> bool:
                return len(answering(replaced_at + 1.0)) >= 2

            with contextlib.suppress(AssertionError):
                await async_wait_until(two_after, "answers from two replicas after the replacement", interval=0.2)
        stop.set()
        await asyncio.gather(*loops)

    lost = [o for o in outcomes if not o["ok"]]
    retried = [o for o in outcomes if o["ok"] and o["tries"] > 1]
    after = {o["replica"] for o in outcomes if o["ok"] and o["t"] > (replaced_at or 0) + 1.0}
    print(
        f"\nkilled {victim}; replaced after {None if replaced_at is None else round(replaced_at - killed_at, 1)} s; "
        f"{len(outcomes)} requests, {len(lost)} lost, {len(retried)} needed retries; failed tries: {dict(failures)}"
    )
    assert replaced_at is not None, "no new replica answered within 180 s"
    assert not lost, f"{len(lost)} requests failed after {CLIENT_RETRIES} retries: {dict(failures)}"
    assert victim not in after and len(after) == 2, after
