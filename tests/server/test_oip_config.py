"""Triton's model configuration extension (``GET /v2/models/{task}[/versions/{v}]/config``): the fields the tools
read, agreeing with the model metadata on every input and output; the ``X-Model-Inputs`` view of both."""

from __future__ import annotations

from adaptformer_server import create_app
from tests.support import serving


def by_name(tensors: list[dict]) -> dict[str, dict]:
    return {t["name"]: t for t in tensors}


async def test_config_fields_of_an_image_and_a_clip_task(vit, tasks_store, make_settings):
    settings = make_settings(max_batch_size=8, max_wait_ms=3.5, queue_size=100, max_images_per_request=16)
    app = create_app(settings, backbone=vit)
    async with serving(app) as client:
        alpha = app.state.adapters.entry("alpha")
        r = await client.get("/v2/models/alpha/config")
        assert r.status_code == 200, r.text
        config = r.json()
        assert config["name"] == "alpha" and config["backend"] == "adaptformer" and config["platform"]
        assert config["max_batch_size"] == 8
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 3500
        assert config["dynamic_batching"]["preferred_batch_size"] == [8]
        assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 100
        assert config["parameters"]["version"]["string_value"] == alpha.version
        assert config["parameters"]["max_images_per_request"]["string_value"] == "16"
        assert config["instance_group"][0]["kind"] == "KIND_CPU"  # the tests' backbone runs on the CPU
        inputs = by_name(config["input"])
        assert set(inputs) == {"image", "input"}
        assert (inputs["image"]["data_type"], inputs["image"]["dims"]) == ("TYPE_STRING", [1])
        assert (inputs["input"]["data_type"], inputs["input"]["dims"]) == ("TYPE_FP32", [3, 32, 32])
        assert inputs["image"]["optional"] is True and inputs["input"]["optional"] is True  # send one of them
        outputs = by_name(config["output"])
        assert (outputs["probabilities"]["data_type"], outputs["probabilities"]["dims"]) == ("TYPE_FP32", [4])
        assert (outputs["labels"]["data_type"], outputs["labels"]["dims"]) == ("TYPE_STRING", [])

        clip = by_name((await client.get("/v2/models/clip/config")).json()["input"])
        assert clip["input"]["dims"] == [4, 3, 32, 32]  # frames, channels, height, width
        assert clip["image"]["dims"] == [-1]  # 1 (one animated image a clip) or the frame images
        beta = (await client.get("/v2/models/beta/config")).json()
        assert by_name(beta["output"])["probabilities"]["dims"] == [3]

        assert "model_configuration" in (await client.get("/v2")).json()["extensions"]
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v2/models/{task}/config", "/v2/models/{task}/versions/{version}/config"} <= set(paths)


async def test_metadata_and_config_agree(vit, tasks_store, make_settings):
    """What perf_analyzer reads: the metadata's shapes are the batch dimension then the config's dims, for every
    input and output, and both list the same tensors (it refuses a config input the metadata lacks)."""
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        for task in ("alpha", "beta", "clip"):
            for view in (
                {},
                {"X-Model-Inputs": "input"},
                {"X-Model-Inputs": "image"},
                {"X-Model-Inputs": "image,input"},
            ):
                meta = (await client.get(f"/v2/models/{task}", headers=view)).json()
                config = (await client.get(f"/v2/models/{task}/config", headers=view)).json()
                for tensors, entries in ((meta["inputs"], config["input"]), (meta["outputs"], config["output"])):
                    assert [t["name"] for t in tensors] == [e["name"] for e in entries], (task, view)
                    for t, e in zip(tensors, entries, strict=True):
                        assert t["shape"] == [-1, *e["dims"]], (task, view, t, e)
                        assert e["data_type"] == {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}[t["datatype"]]


async def test_the_inputs_view_narrows_both_documents_to_one_required_input(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        r = await client.get("/v2/models/alpha/config", headers={"X-Model-Inputs": "input"})
        assert r.status_code == 200 and r.headers["Vary"] == "X-Model-Inputs"
        assert [(i["name"], i["optional"]) for i in r.json()["input"]] == [("input", False)]
        meta = await client.get("/v2/models/alpha", headers={"X-Model-Inputs": " image "})
        assert [i["name"] for i in meta.json()["inputs"]] == ["image"] and meta.headers["Vary"] == "X-Model-Inputs"
        both = (await client.get("/v2/models/alpha/config", headers={"X-Model-Inputs": "input, image"})).json()
        assert [(i["name"], i["optional"]) for i in both["input"]] == [("image", True), ("input", True)]
        for bad in ("pixels", "", "input,pixels"):
            for path in ("/v2/models/alpha/config", "/v2/models/alpha"):
                r = await client.get(path, headers={"X-Model-Inputs": bad})
                assert r.status_code == 400 and "X-Model-Inputs" in r.json()["error"], (path, bad, r.text)


async def test_config_versions_unknown_models_and_auth(vit, tasks_store, make_settings):
    app = create_app(make_settings(api_keys="k1"), backbone=vit)
    async with serving(app) as client:
        key = {"X-API-Key": "k1"}
        version = app.state.adapters.entry("alpha").version
        r = await client.get(f"/v2/models/alpha/versions/{version}/config", headers=key)
        assert r.status_code == 200 and r.json()["parameters"]["version"]["string_value"] == version
        for path in ("/v2/models/alpha/versions/000000000000/config", "/v2/models/nope/config"):
            r = await client.get(path, headers=key)
            meta = await client.get(path.removesuffix("/config"), headers=key)
            assert r.status_code == meta.status_code == 404, (path, r.text)
            assert set(r.json()) == {"error"} and r.json()["error"] == meta.json()["error"]
        r = await client.get("/v2/models/alpha/config")
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "key" in r.json()["error"]
        r = await client.get("/v2/models/alpha/config", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403
        assert (await client.get("/v2/models/alpha/config", headers={"Authorization": "Bearer k1"})).status_code == 200
