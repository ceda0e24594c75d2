"""The API as a client sees it: predictions, batching across tasks, adapter management, health, metrics."""

from __future__ import annotations

import asyncio

import pytest
import torch

from adaptformer.adapter_file import task_from_bytes
from adaptformer.engine import MultiTaskViT
from adaptformer_server import create_app
from tests.support import adapter_bytes, gif, image_files, png, serving, tensor_of, upload_files


def reference_scores(vit, store, task: str, x: torch.Tensor) -> dict[str, float]:
    """The scores of one input run alone through a fresh engine with its task."""
    engine = MultiTaskViT(vit)
    adapter = engine.add_task(task, task_from_bytes((store / f"{task}.safetensors").read_bytes()))
    logits = engine(x.unsqueeze(0), task)[0]
    return dict(zip(adapter.info.labels, torch.softmax(logits, -1).tolist(), strict=True))


def scores(prediction: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in prediction}


async def test_mixed_tasks_share_one_batch_and_match_single_runs(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_batch_size=6, max_wait_ms=30_000), backbone=vit)
    jobs = [("alpha", 10), ("beta", 11), ("alpha", 12), ("beta", 13), ("alpha", 14), ("beta", 15)]
    async with serving(app) as client:
        responses = await asyncio.gather(
            *(client.post(f"/predict?task={t}&top_k=10", files=image_files(png(seed))) for t, seed in jobs)
        )
        assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
        # max_wait is 30 s: the answers came back at once only because the six samples filled one batch
        assert list(app.state.inference.batcher.recent_batch_sizes) == [6]
        spec = app.state.adapters.entry("alpha").spec
        for (task, seed), r in zip(jobs, responses, strict=True):
            body = r.json()
            assert body["task"] == task and body["modality"] == "image"
            want = reference_scores(vit, tasks_store, task, tensor_of(png(seed), spec))
            got = scores(body["predictions"][0])
            assert got.keys() == want.keys()
            for label in want:
                assert got[label] == pytest.approx(want[label], abs=1e-5)
        metrics = (await client.get("/metrics")).text
        assert "adaptformer_batch_size_bucket" in metrics
        assert 'adaptformer_predict_requests_total{status="200",task="alpha"} 3.0' in metrics


async def test_predict_forms(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        many = await client.post("/predict", params={"task": "alpha", "top_k": 2}, files=image_files(png(1), png(2)))
        assert many.status_code == 200
        body = many.json()
        assert len(body["predictions"]) == 2 and all(len(p) == 2 for p in body["predictions"])
        assert body["version"] == app.state.adapters.entry("alpha").version
        assert body["latency_ms"] > 0
        scores_ = [p["score"] for p in body["predictions"][0]]
        assert scores_ == sorted(scores_, reverse=True)

        raw = await client.post("/predict?task=alpha", content=png(1), headers={"Content-Type": "image/png"})
        assert raw.status_code == 200
        raw_scores = scores(raw.json()["predictions"][0])
        for p in body["predictions"][0]:
            assert raw_scores[p["label"]] == pytest.approx(p["score"], abs=1e-6)

        clamped = await client.post("/predict?task=beta&top_k=50", files=image_files(png(3)))
        assert clamped.status_code == 200 and len(clamped.json()["predictions"][0]) == 3

        frames = await client.post("/predict?task=clip", files=image_files(*(png(i) for i in range(4)), field="frame"))
        assert frames.status_code == 200, frames.text
        assert frames.json()["modality"] == "clip" and len(frames.json()["predictions"]) == 1

        animated = await client.post("/predict?task=clip", files=image_files(gif(4)))
        assert animated.status_code == 200, animated.text
        raw_gif = await client.post("/predict?task=clip", content=gif(4), headers={"Content-Type": "image/gif"})
        assert raw_gif.status_code == 200
        assert raw_gif.json()["predictions"] == animated.json()["predictions"]


async def test_adapter_management(vit, store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        assert (await client.get("/adapters")).json() == {"adapters": []}
        first = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=5)))
        assert first.status_code == 201, first.text
        info = first.json()["adapter"]
        assert first.json()["replaced"] is False and first.json()["previous_version"] is None
        assert info["task"] == "cars" and len(info["version"]) == 12 and info["resident"] is True
        assert info["method"] == "adaptformer" and info["modality"] == "image" and info["frames"] == 1
        assert info["num_classes"] == 4 and info["labels"] == [f"cars-{i}" for i in range(4)]
        assert info["params"] > 0 and 0 < info["percent_of_backbone"] < 100
        assert info["fingerprint"] == app.state.runtime.backbone.fingerprint
        assert info["config"]["bottleneck"] == 8 and info["created"]
        assert (store / "cars.safetensors").stat().st_size == info["size_bytes"]

        # servable as soon as the upload returns
        assert (await client.post("/predict?task=cars", files=image_files(png(1)))).json()["version"] == info["version"]

        renamed = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=6), task="trucks"))
        assert renamed.status_code == 201 and renamed.json()["adapter"]["task"] == "trucks"
        replaced = await client.post("/adapters", **upload_files(adapter_bytes(vit, "cars", seed=7)))
        assert replaced.json()["replaced"] is True and replaced.json()["previous_version"] == info["version"]
        assert replaced.json()["adapter"]["version"] != info["version"]

        listed = (await client.get("/adapters")).json()["adapters"]
        assert [a["task"] for a in listed] == ["cars", "trucks"]
        one = await client.get("/adapters/cars")
        assert one.status_code == 200 and one.json()["version"] == replaced.json()["adapter"]["version"]

        deleted = await client.delete("/adapters/cars")
        assert deleted.json() == {"task": "cars", "deleted": True, "version": one.json()["version"]}
        assert not (store / "cars.safetensors").exists()
        assert (await client.get("/adapters/cars")).status_code == 404
        assert (await client.post("/predict?task=cars", files=image_files(png(1)))).status_code == 404


async def test_health_ready_docs_metrics(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
        assert ready["status"] == "ready" and ready["adapters"] == 3
        assert ready["fingerprint"].startswith("sha256:") and ready["backbone"] == "tiny-test-vit"
        assert (await client.get("/docs")).status_code == 200
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/predict", "/adapters", "/adapters/{task}", "/healthz", "/readyz", "/metrics"} <= set(paths)
        await client.post("/predict?task=alpha", files=image_files(png(1)))
        text = (await client.get("/metrics")).text
        for name in (
            "adaptformer_predict_requests_total",
            "adaptformer_predict_seconds_bucket",
            "adaptformer_batch_size_bucket",
            "adaptformer_queue_depth",
            "adaptformer_resident_adapters",
            "adaptformer_page_ins_total",
            "adaptformer_http_requests_total",
        ):
            assert name in text, name


async def test_openapi_describes_every_field_of_a_task(vit, tasks_store, make_settings):
    """/docs says what each field of ``GET /adapters/{task}`` means, not only its type."""
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("AdapterInfo", "InputInfo"):
        bare = [field for field, spec in schemas[name]["properties"].items() if not spec.get("description")]
        assert not bare, f"{name} fields without a description in the OpenAPI schema: {bare}"
