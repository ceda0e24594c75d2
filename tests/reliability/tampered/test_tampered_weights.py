"""Tampered adapter weights: finite in float32 but not in the serving dtype, or overflowing at prediction; and what
``task=*`` does with a task it cannot load or whose scores overflow.
"""

from __future__ import annotations

import torch

from tests.reliability.tampered.files import (
    IMAGE,
    demo,
    make_app,
    seed,
    with_tensors,
)
from tests.support import serving, upload_files


# -- weights finite in the serving dtype; task=* takes the tasks it resolved ---------------------------
def _overflowing(data: bytes) -> bytes:
    def edit(t: dict[str, torch.Tensor]) -> None:
        w = t["head.weight"].double()
        w[0, 0] = 1e300  # finite in float64, inf in float32
        t["head.weight"] = w

    return with_tensors(data, edit)


async def test_weights_that_overflow_the_serving_dtype_are_refused(tmp_path):
    store = seed(tmp_path / "store")
    app = make_app(store)
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(_overflowing(demo("fashion"))))
        assert r.status_code in (409, 422), r.text
        assert not (store / "fashion.safetensors").exists()


async def test_weights_that_overflow_float16_are_refused_by_a_float16_server(tmp_path):
    def big(t: dict[str, torch.Tensor]) -> None:
        t["head.weight"][0, 0] = 1e5  # finite in float32, not in float16

    app = make_app(seed(tmp_path / "store"), dtype="float16", device="cpu")
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(with_tensors(demo("fashion"), big)))
        assert r.status_code == 409 and r.json()["error"]["check"] == "dtype", r.text
        assert "float16" in r.json()["error"]["message"]
        assert (await client.post("/adapters", **upload_files(demo("fashion")))).status_code == 201


async def test_star_skips_a_stored_task_it_cannot_load(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"), fashion=demo("fashion"), big=_overflowing(demo("fashion")))
    app = make_app(store)
    async with serving(app) as client:
        assert (await client.post("/predict?task=big", **IMAGE)).status_code == 422  # asked by name: its error
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]


async def test_star_leaves_out_a_task_whose_scores_overflow(tmp_path):
    def huge(t: dict[str, torch.Tensor]) -> None:
        t["head.weight"] = torch.full_like(t["head.weight"], 3e38)  # finite, but the logits are not

    app = make_app(seed(tmp_path / "store", digits=demo("digits"), fashion=demo("fashion")))
    async with serving(app) as client:
        assert (
            await client.post("/adapters", **upload_files(with_tensors(demo("fashion"), huge), task="huge"))
        ).status_code == 201
        assert (await client.post("/predict?task=huge", **IMAGE)).status_code == 422  # asked by name: its error
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]
        r = await client.post("/predict?task=digits&task=huge", **IMAGE)  # named outright: the request fails
        assert r.status_code == 422


async def test_star_still_runs_its_tasks_in_one_forward_pass(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"), emoji=demo("emoji"), fashion=demo("fashion"))
    app = make_app(store, max_batch_size=3, max_wait_ms=30_000)  # a batch short of 3 samples would wait 30 s
    async with serving(app) as client:
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert list(app.state.inference.batcher.recent_batch_sizes) == [3]


async def test_star_keeps_its_tasks_when_one_is_deleted_meanwhile(tmp_path, monkeypatch):
    store = seed(tmp_path / "store", digits=demo("digits"), emoji=demo("emoji"), fashion=demo("fashion"))
    app = make_app(store)
    from adaptformer_server.routes import predict as predict_route

    read = predict_route.read_predict_body

    async def read_then_delete(request, settings):
        body = await read(request, settings)
        await app.state.adapters.delete("emoji")  # while the request runs: after `*` was expanded
        return body

    monkeypatch.setattr(predict_route, "read_predict_body", read_then_delete)
    async with serving(app) as client:
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]
