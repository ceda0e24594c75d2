"""Operations: per-task latency metrics with a bounded label set, process metrics, CORS origins."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from adaptformer_server.app import create_app
from adaptformer_server.settings import Settings
from tests.support import image_files, png, serving

TASK_SERIES = re.compile(r'^adaptformer_task_request_seconds_count\{outcome="(\w+)",task="([^"]*)"\} (\S+)$', re.M)


def task_counts(text: str) -> dict[tuple[str, str], float]:
    return {(task, outcome): float(n) for outcome, task, n in TASK_SERIES.findall(text)}


async def test_per_task_latency_appears_after_a_predict(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        assert task_counts((await client.get("/metrics")).text) == {}
        assert (await client.post("/predict?task=alpha", files=image_files(png(1)))).status_code == 200
        two = await client.post("/predict?task=alpha&task=beta", files=image_files(png(2)))
        assert two.status_code == 200
        v2 = await client.post(
            "/v2/models/beta/infer",
            json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not an image"]}]},
        )
        assert v2.status_code == 400
        assert (await client.post("/predict?task=*", files=image_files(png(3)))).status_code == 200
        text = (await client.get("/metrics")).text
    assert task_counts(text) == {
        ("alpha", "ok"): 2.0,
        ("beta", "ok"): 1.0,
        ("beta", "error"): 1.0,
        ("*", "ok"): 1.0,
    }
    assert re.search(r'^adaptformer_task_request_seconds_sum\{outcome="ok",task="alpha"\} [1-9e.\-0-9]+$', text, re.M)


async def test_unknown_task_names_count_under_one_fixed_label(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    names = ["nosuch", "other-one", "x" * 60, "caf%C3%A9", "a%0Ab"]
    async with serving(app) as client:
        for name in [*names, "..", "%2e%2e"]:  # a path would lose its `..` before the server sees it
            r = await client.post(f"/predict?task={name}", files=image_files(png(1)))
            assert r.status_code in (400, 404), (name, r.status_code)
        for name in names:
            r = await client.post(f"/v2/models/{name}/infer", json={"inputs": []})
            assert r.status_code in (400, 404), (name, r.status_code)
        several = await client.post("/predict?task=nosuch&task=nosuch2&task=alpha", files=image_files(png(1)))
        assert several.status_code == 404
        text = (await client.get("/metrics")).text
    assert task_counts(text) == {("other", "error"): 2.0 * len(names) + 2 + 1, ("alpha", "error"): 1.0}
    for name in ("nosuch", "other-one", "xxxxxxxx"):
        assert name not in text


async def test_process_metrics_are_exported(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        text = (await client.get("/metrics")).text
    for series in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info"):
        assert re.search(rf"^{series}(\{{.*\}})? \S+$", text, re.M), series
    assert "python_gc_collections_total" in text


ORIGIN = "https://app.example.com"


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, x-request-id",
    }


async def test_cors_preflight_allowed_for_a_configured_origin_only(vit, tasks_store, make_settings):
    app = create_app(make_settings(cors_origins=f"{ORIGIN}/, http://localhost:5173"), backbone=vit)
    async with serving(app) as client:
        ok = await client.options("/predict?task=alpha", headers=preflight(ORIGIN))
        assert ok.status_code == 200, ok.text
        assert ok.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "POST" in ok.headers["access-control-allow-methods"]
        for other in ("https://evil.example", "https://app.example.com.evil.example", "null"):
            refused = await client.options("/predict?task=alpha", headers=preflight(other))
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers, other

        # the request itself: a configured origin gets the answer and may read the request id; others are refused
        r = await client.post("/predict?task=alpha", files=image_files(png(1)), headers={"Origin": ORIGIN})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]
        evil = await client.post(
            "/predict?task=alpha", files=image_files(png(1)), headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers


async def test_no_cors_without_configured_origins(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        r = await client.options("/predict?task=alpha", headers=preflight(ORIGIN))
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = await client.get("/adapters", headers={"Origin": ORIGIN})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("value", ["*", "app.example.com", "https://app.example.com/path", "ftp://files.example"])
def test_cors_origins_must_be_listed_origins(value: str):
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=value)
