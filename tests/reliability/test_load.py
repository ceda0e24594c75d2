"""Load, overload and hot swap against a real server process.

Quick sizes run by default; ``-m slow`` runs the full load (64 clients for 60 s). The figures of the full runs
are in docs/RELIABILITY.md (``python -m benchmarks.reliability``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from benchmarks.reliability import Server, Traffic, hotswap_run, load_run, overload_run, references, upload_all

pytestmark = pytest.mark.e2e


def _report(result: dict) -> str:
    """The figures and the first answers that went wrong, in full (a dict would be cut short in pytest's report)."""
    return json.dumps(result, indent=1, default=str)


def _check_load(result: dict) -> None:
    assert result["errors_5xx"] == 0, _report(result)
    assert result["lost"] == 0, _report(result)
    assert result["mismatched"] == 0, _report(result)
    assert result["status"].keys() == {200}, _report(result)
    assert result["requests"] > 0


def test_load_quick(shared_server, shared_tasks, shared_refs, images):
    """16 clients for 5 s over 16 tasks, 1-3 images of mixed sizes each: every answer equals the image alone."""
    assert len(shared_tasks) == 16
    traffic = Traffic(shared_server.url, shared_tasks, images, shared_refs)
    result = asyncio.run(load_run(traffic, 16, 5.0, shared_server.pid))
    _check_load(result)
    assert set(result["rss_mb"]) == {"start", "middle", "end"}
    assert shared_server.alive()


@pytest.mark.slow
def test_load_full(shared_server, shared_tasks, shared_refs, images):
    """The full run: 64 clients for 60 s."""
    traffic = Traffic(shared_server.url, shared_tasks, images, shared_refs)
    result = asyncio.run(load_run(traffic, 64, 60.0, shared_server.pid))
    _check_load(result)
    # resident memory does not keep growing under a steady load (allocator warm-up aside)
    assert result["rss_mb"]["end"] - result["rss_mb"]["middle"] < 100, result["rss_mb"]


def test_hotswap_under_load(shared_server, kit, images):
    """Replace, add and delete every 100-200 ms while 8 clients predict; each answer from exactly one version."""
    result = asyncio.run(hotswap_run(shared_server.url, kit, images[:4], clients=8, seconds=6.0))
    assert result["violations"] == 0 and result["swap_errors"] == 0, _report(result)
    assert result["answers"].get("200", 0) > 10, result
    assert sum(result["swaps"].values()) >= 4, result
    assert {"replace", "add", "delete"} <= set(result["swaps"]), result
    assert shared_server.alive()


def test_overload_sheds_and_recovers(kit, images):
    """A queue of 8 samples that fills faster than it drains: 503 + Retry-After, fast, and full recovery."""
    settings = {"queue_size": 8, "max_batch_size": 64, "max_wait_ms": 100}
    with Server(kit.weights, kit.workdir / "store-overload", kit.workdir / "server-overload.log", **settings) as s:
        tasks = upload_all(s.url, {k: kit.tasks[k] for k in ("t00", "t01", "t02", "t03")})
        refs = asyncio.run(references(s.url, tasks, images[:3]))
        result = asyncio.run(overload_run(Traffic(s.url, tasks, images[:3], refs), clients=32, seconds=4.0, pid=s.pid))
        assert s.alive()
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
    # clients beyond capacity are refused, with Retry-After, and only ever with 503 overloaded
    assert result["rejected_503"] > 0, result
    assert result["rejected_without_retry_after"] == 0, result
    assert set(result["status"]) <= {200, 503}, result
    assert result["lost"] == 0 and result["mismatched"] == 0, result
    # refusals are quick: no waiting in a queue that is full (generous bound for a shared 2-core machine)
    assert result["rejected_latency"]["p95_ms"] < 2000, result
    # /healthz answers throughout
    assert result["healthz"]["failures"] == 0 and result["healthz"]["probes"] > 5, result
    assert result["healthz"]["p95_ms"] < 2000, result
    # full recovery once the load stops
    assert result["queue_depth_after"] == 0, result
    assert result["after"]["ok"] == result["after"]["of"], result
    assert result["after"]["p50_ms"] < 3 * result["before"]["p50_ms"] + 100, result
