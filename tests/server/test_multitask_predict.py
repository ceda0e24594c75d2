"""One image, many tasks: ``POST /predict?task=a&task=b`` (or ``task=*``) in one request and one forward pass."""

from __future__ import annotations

import asyncio

import pytest

from adaptformer_server import create_app
from tests.support import adapter_bytes, image_files, png, serving


def scores(prediction: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in prediction}


async def test_multi_task_equals_single_task_answers_in_one_forward(vit, tasks_store, make_settings):
    # max_wait 30 s: the request only returns at once if its 4 samples (2 images x 2 tasks) filled one batch
    app = create_app(make_settings(max_batch_size=4, max_wait_ms=30_000), backbone=vit)
    images = image_files(png(1), png(2))
    async with serving(app) as client:
        multi = await client.post("/predict", params={"task": ["alpha", "beta"], "top_k": 10}, files=images)
        assert multi.status_code == 200, multi.text
        assert list(app.state.inference.batcher.recent_batch_sizes) == [4]
        body = multi.json()
        assert set(body) == {"results", "latency_ms"} and body["latency_ms"] > 0
        assert [r["task"] for r in body["results"]] == ["alpha", "beta"]
        # the two single-task requests together fill the next batch of 4 (each alone would wait 30 s)
        singles = await asyncio.gather(
            *(client.post("/predict", params={"task": t, "top_k": 10}, files=images) for t in ("alpha", "beta"))
        )
        for result, single in zip(body["results"], singles, strict=True):
            task = result["task"]
            assert result["version"] == app.state.adapters.entry(task).version and result["modality"] == "image"
            assert len(result["predictions"]) == 2
            assert set(single.json()) == {"task", "version", "modality", "predictions", "latency_ms"}
            for got, want in zip(result["predictions"], single.json()["predictions"], strict=True):
                assert [p["label"] for p in got] == [p["label"] for p in want]
                for label, score in scores(want).items():
                    assert scores(got)[label] == pytest.approx(score, abs=1e-5)
        metrics = (await client.get("/metrics")).text
        assert 'adaptformer_predict_requests_total{status="200",task="beta"} 2.0' in metrics


async def test_star_is_every_image_task_and_repeats_collapse(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        star = await client.post("/predict?task=*&top_k=1", files=image_files(png(3)))
        assert star.status_code == 200, star.text
        assert [r["task"] for r in star.json()["results"]] == ["alpha", "beta"]  # `clip` is a clip task
        assert all(len(r["predictions"][0]) == 1 for r in star.json()["results"])
        raw = await client.post(
            "/predict?task=beta&task=alpha&task=beta", content=png(3), headers={"Content-Type": "image/png"}
        )
        assert [r["task"] for r in raw.json()["results"]] == ["beta", "alpha"]
        assert raw.json()["results"][1]["version"] == star.json()["results"][0]["version"]
        # clip tasks can be combined too when the input fits each: here frames only fit `clip`
        clip = await client.post(
            "/predict?task=clip&task=clip", files=image_files(*(png(i) for i in range(4)), field="frame")
        )
        assert clip.status_code == 200 and clip.json()["results"][0]["modality"] == "clip"


async def test_multi_task_errors(vit, tasks_store, make_settings, store):
    app = create_app(make_settings(api_keys="k1"), backbone=vit)
    key = {"Authorization": "Bearer k1"}
    async with serving(app) as client:
        r = await client.post("/predict?task=alpha&task=beta", files=image_files(png(1)))
        assert r.status_code == 401
        r = await client.post("/predict?task=alpha&task=nope", files=image_files(png(1)), headers=key)
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
        r = await client.post("/predict?task=alpha&task=../x", files=image_files(png(1)), headers=key)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
        r = await client.post("/predict?task=alpha&task=clip", files=image_files(png(1)), headers=key)
        assert r.status_code == 400 and "clip" in r.json()["error"]["message"]
        r = await client.post("/predict?task=alpha&task=beta&top_k=0", files=image_files(png(1)), headers=key)
        assert r.status_code == 400


async def test_star_without_image_tasks_and_sample_bound(vit, store, make_settings):
    (store / "clip.safetensors").write_bytes(adapter_bytes(vit, "clip", seed=3, clip=True))
    app = create_app(make_settings(queue_size=3), backbone=vit)
    async with serving(app) as client:
        r = await client.post("/predict?task=*", files=image_files(png(1)))
        assert r.status_code == 404 and "image task" in r.json()["error"]["message"]
        await client.post("/adapters", files={"file": ("a.safetensors", adapter_bytes(vit, "a", seed=4), "x")})
        await client.post("/adapters", files={"file": ("b.safetensors", adapter_bytes(vit, "b", seed=5), "x")})
        r = await client.post("/predict?task=a&task=b", files=image_files(png(1), png(2)))
        assert r.status_code == 413 and "4 samples" in r.json()["error"]["message"]
