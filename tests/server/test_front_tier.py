"""A server of several processes (``--workers 2``): two front processes and one engine process behind one port.

What users rely on: every front serves what the one owner of adapter state holds (a 201 from any front is served
by every front on its next request; a delete answers 404 everywhere), batches mix the requests of every front, a
killed engine fails requests with 503 in seconds and comes back by itself, a killed front is replaced, and
stopping the server leaves no process behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, adapter_bytes, children, embedded_backbone, png, upload_files, wait_until

REPLICA = "X-AdaptFormer-Replica"


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("tier")
    vit = embedded_backbone(tmp / "backbone.safetensors")
    store = tmp / "store"
    store.mkdir()
    for task, seed in (("cats", 1), ("dogs", 2), ("birds", 3)):
        (store / f"{task}.safetensors").write_bytes(adapter_bytes(vit, task, seed=seed))
    flags = ["--weights", tmp / "backbone.safetensors", "--store", store, "--no-seed-demo", "--threads", "1"]
    flags += ["--workers", "2", "--log-level", "warning", "--keep-versions", "4"]
    with ServerProcess(flags, log=tmp / "server.log", env={"ADAPTFORMER_MAX_WAIT_MS": "2"}) as server:
        server.vit = vit  # type: ignore[attr-defined]
        yield server


def processes(server: ServerProcess) -> tuple[list[int], list[int]]:
    """The pids of the server's engine and front processes."""
    kids = children(server.pid)
    engine = [pid for pid, title in kids.items() if title.startswith("adaptformer engine")]
    fronts = [pid for pid, title in kids.items() if title.startswith("adaptformer front")]
    return engine, fronts


def fresh(url: str, method: str, path: str, **kw: object) -> httpx.Response:
    """One request on a new connection (the kernel hands each connection to either front)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.request(method, path, **kw)  # type: ignore[arg-type]


def predict(url: str, task: str) -> httpx.Response:
    return fresh(url, "POST", f"/predict?task={task}", files=[("image", ("x.png", png(1), "image/png"))])


def spread(url: str, task: str, n: int = 20) -> tuple[list[httpx.Response], set[str]]:
    """``n`` predictions, then more until both fronts answered one; the answers and the processes that gave them."""
    answers = [predict(url, task) for _ in range(n)]
    while len({r.headers[REPLICA] for r in answers}) < 2 and len(answers) < 200:
        answers.append(predict(url, task))
    return answers, {r.headers[REPLICA] for r in answers}


def test_processes_are_named_and_counted(tier: ServerProcess) -> None:
    engine, fronts = processes(tier)
    assert len(engine) == 1 and len(fronts) == 2
    ready = httpx.get(f"{tier.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["adapters"] >= 3


def test_bad_names_are_answered_as_in_one_process(tier: ServerProcess) -> None:
    for _ in range(6):  # new connections: both fronts
        bad, unknown = predict(tier.url, "..%2Fx"), predict(tier.url, "nosuchtask")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input", bad.text
        assert unknown.status_code == 404 and "unknown task 'nosuchtask'" in unknown.json()["error"]["message"]


def test_upload_delete_rollback_served_by_every_front(tier: ServerProcess) -> None:
    url = tier.url
    first = fresh(url, "POST", "/adapters", **upload_files(adapter_bytes(tier.vit, "owls", seed=5)))  # type: ignore[attr-defined]
    assert first.status_code == 201, first.text
    v1 = first.json()["adapter"]["version"]
    answers, fronts = spread(url, "owls")
    assert len(fronts) == 2, "the connections all went to one front"
    assert all(r.status_code == 200 and r.json()["version"] == v1 for r in answers)

    second = fresh(url, "POST", "/adapters", **upload_files(adapter_bytes(tier.vit, "owls", seed=6)))  # type: ignore[attr-defined]
    assert second.status_code == 201, second.text
    v2 = second.json()["adapter"]["version"]
    assert v2 != v1
    answers, fronts = spread(url, "owls")
    assert len(fronts) == 2 and all(r.status_code == 200 and r.json()["version"] == v2 for r in answers)

    pinned, fronts = spread(url, f"owls@{v1}")  # a kept old version, pinned, from every front
    assert len(fronts) == 2 and all(r.status_code == 200 and r.json()["version"] == v1 for r in pinned)

    back = fresh(url, "POST", "/adapters/owls/rollback")
    assert back.status_code == 200, back.text
    answers, fronts = spread(url, "owls")
    assert len(fronts) == 2 and all(r.status_code == 200 and r.json()["version"] == v1 for r in answers)

    assert fresh(url, "DELETE", "/adapters/owls").status_code == 200
    answers, fronts = spread(url, "owls")
    assert len(fronts) == 2 and all(r.status_code == 404 for r in answers)
    assert all(r.json()["error"]["code"] == "not_found" for r in answers)


def test_uploads_under_load_are_served_at_once(tier: ServerProcess) -> None:
    """While other clients keep both fronts' caches busy, every prediction made after a 201 answers the new
    version (an entry a front read just before an upload is never kept as the state after it)."""
    url, stop = tier.url, threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                client.post("/predict?task=gulls", files=[("image", ("x.png", png(2), "image/png"))])

    assert fresh(url, "POST", "/adapters", **upload_files(adapter_bytes(tier.vit, "gulls", seed=20))).status_code == 201  # type: ignore[attr-defined]
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for seed in range(21, 27):
            up = fresh(url, "POST", "/adapters", **upload_files(adapter_bytes(tier.vit, "gulls", seed=seed)))  # type: ignore[attr-defined]
            assert up.status_code == 201, up.text
            version = up.json()["adapter"]["version"]
            served = [predict(url, "gulls").json()["version"] for _ in range(8)]
            assert served == [version] * 8, (version, served)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert fresh(url, "DELETE", "/adapters/gulls").status_code == 200


def test_paging_agrees_across_fronts(tier: ServerProcess) -> None:
    pages = {fresh(tier.url, "GET", "/adapters?limit=2").text for _ in range(12)}
    assert len(pages) == 1


def _batch_counts(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    count = float(re.search(r"^adaptformer_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"^adaptformer_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return count, total


def test_batches_mix_requests_of_several_fronts(tmp_path: Path) -> None:
    """With a long batch window, a burst of requests through both fronts runs as one forward pass: a batch of
    the whole burst, of which neither front sent all."""
    vit = embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir()
    for task, seed in (("cats", 1), ("dogs", 2)):
        (store / f"{task}.safetensors").write_bytes(adapter_bytes(vit, task, seed=seed))
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--threads", "1"]
    flags += ["--workers", "2", "--log-level", "warning", "--max-wait-ms", "1500", "--max-batch-size", "64"]
    with ServerProcess(flags, log=tmp_path / "server.log") as server:
        for task in ("cats", "dogs"):  # page both in first: admission must not split the burst
            assert predict(server.url, task).status_code == 200
        n = 16
        for _attempt in range(5):
            count0, total0 = _batch_counts(server.url)
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                answers = list(pool.map(lambda i: predict(server.url, ("cats", "dogs")[i % 2]), range(n)))
            assert all(r.status_code == 200 for r in answers)
            count, total = _batch_counts(server.url)
            fronts = {r.headers[REPLICA] for r in answers}
            if count - count0 == 1 and len(fronts) == 2:
                break
        assert total - total0 == n
        assert count - count0 == 1, f"{n} requests ran as {count - count0} batches"
        assert len(fronts) == 2, "every request of the burst went to one front"
        tasks_hist = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert re.search(r'^adaptformer_batch_tasks_bucket\{le="2.0"\} [1-9]', tasks_hist, re.M)


def test_engine_killed_fails_fast_and_comes_back(tier: ServerProcess) -> None:
    (engine,), _ = processes(tier)
    assert predict(tier.url, "cats").status_code == 200

    def timed(_: int) -> tuple[int, float, str | None]:
        start = time.monotonic()
        try:
            r = predict(tier.url, "cats")
            return r.status_code, time.monotonic() - start, r.headers.get("Retry-After")
        except httpx.HTTPError:
            return 0, time.monotonic() - start, None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(timed, i) for i in range(40)]
        time.sleep(0.05)
        os.kill(engine, signal.SIGKILL)
        results = [f.result() for f in running]
    assert all(elapsed < 10 for _, elapsed, _ in results), results
    assert all(code in (200, 503) for code, _, _ in results), results
    assert all(after is not None for code, _, after in results if code == 503)

    ready = httpx.get(f"{tier.url}/readyz", timeout=10)
    assert ready.status_code in (200, 503)
    wait_until(
        lambda: httpx.get(f"{tier.url}/readyz", timeout=10).status_code == 200, "the engine restarted", timeout=120
    )
    (new_engine,), fronts = processes(tier)
    assert new_engine != engine and len(fronts) == 2
    answers, seen = spread(tier.url, "cats", 6)
    assert len(seen) == 2 and all(r.status_code == 200 for r in answers), [r.text for r in answers]


def test_front_killed_is_replaced(tier: ServerProcess) -> None:
    _, fronts = processes(tier)
    os.kill(fronts[0], signal.SIGKILL)
    answers = []
    for _ in range(10):  # the other front keeps serving (a connection the dead one had accepted may fail)
        try:
            answers.append(predict(tier.url, "dogs").status_code)
        except httpx.HTTPError:
            answers.append(0)
    assert answers.count(200) >= 8, answers
    wait_until(lambda: len(processes(tier)[1]) == 2 and fronts[0] not in processes(tier)[1], "a new front", timeout=120)
    wait_until(lambda: len(spread(tier.url, "dogs", 4)[1]) == 2, "both fronts answering", timeout=120)


def test_sigterm_stops_every_process(tmp_path: Path) -> None:
    vit = embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir()
    (store / "cats.safetensors").write_bytes(adapter_bytes(vit, "cats", seed=1))
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--workers", "2"]
    server = ServerProcess(flags, log=tmp_path / "server.log")
    try:
        kids = list(children(server.pid))
        assert len(kids) >= 3
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in kids), "no child left", timeout=30)
    finally:
        server.close()


def test_parent_killed_leaves_no_orphan(tmp_path: Path) -> None:
    embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir()
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--workers", "2"]
    server = ServerProcess(flags, log=tmp_path / "server.log")
    kids = list(children(server.pid))
    assert len(kids) >= 3
    server.kill()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in kids), "no orphan left", timeout=30)


def test_engine_that_cannot_load_stops_the_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    flags = ["--weights", bad, "--store", tmp_path / "store", "--workers", "2"]
    server = ServerProcess(flags, log=tmp_path / "server.log", ready=False)
    try:
        assert server.proc.wait(120) == 1, server.output()
    finally:
        server.close()


def _predictions(text: str, task: str) -> float:
    pattern = rf'^adaptformer_predict_requests_total\{{status="200",task="{task}"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_of_any_front_report_the_whole_server(tier: ServerProcess) -> None:
    answers, fronts = spread(tier.url, "birds", 10)
    assert len(fronts) == 2 and all(r.status_code == 200 for r in answers)
    seen = {}
    for _ in range(40):
        r = fresh(tier.url, "GET", "/metrics")
        seen[r.headers[REPLICA]] = _predictions(r.text, "birds")
        if len(seen) == 2:
            break
    assert len(seen) == 2, "every /metrics request went to one front"
    assert set(seen.values()) == {float(len(answers))}, seen  # both fronts' counts, from either front
    text = fresh(tier.url, "GET", "/metrics").text
    assert "# TYPE adaptformer_source_fetches_total counter" in text  # listed though no process has a sample
    assert re.search(r"^adaptformer_batch_size_count [1-9]", text, re.M)  # the engine's series too
