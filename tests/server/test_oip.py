"""The Open Inference Protocol (KServe v2) REST API, with requests written by hand from the published protocol,
and with NVIDIA's ``tritonclient`` (a dev dependency: missing, its test fails rather than skips) against a real
server process."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import torch

from adaptformer.preprocess import preprocess_clip
from adaptformer_server import create_app
from tests.support import adapter_bytes, gif, image_files, live_server, png, serving, tensor_of


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bytes_input(*images: bytes, shape: list[int] | None = None) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": shape or [len(images)], "data": [b64(i) for i in images]}


async def probabilities(client, task: str, *images: bytes) -> list[dict[str, float]]:
    r = await client.post("/predict", params={"task": task, "top_k": 100}, files=image_files(*images))
    assert r.status_code == 200, r.text
    return [{p["label"]: p["score"] for p in preds} for preds in r.json()["predictions"]]


def check_outputs(body: dict, labels: list[str], want: list[dict[str, float]]) -> None:
    out = {o["name"]: o for o in body["outputs"]}
    probs = out["probabilities"]
    assert probs["datatype"] == "FP32" and probs["shape"] == [len(want), len(labels)]
    rows = np.array(probs["data"], dtype=np.float32).reshape(probs["shape"])
    for row, expected in zip(rows, want, strict=True):
        assert row.tolist() == pytest.approx([expected[label] for label in labels], abs=1e-5)
    assert out["labels"]["datatype"] == "BYTES" and out["labels"]["shape"] == [len(want)]
    assert out["labels"]["data"] == [max(w, key=w.__getitem__) for w in want]


async def test_server_health_and_model_metadata(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        meta = (await client.get("/v2")).json()
        assert meta["name"] == "adaptformer-serve" and meta["version"] and isinstance(meta["extensions"], list)
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        entry = app.state.adapters.entry("clip")
        model = (await client.get("/v2/models/clip")).json()
        assert model["name"] == "clip" and model["versions"] == [entry.version] and model["platform"]
        inputs = {i["name"]: i for i in model["inputs"]}
        assert inputs["image"]["datatype"] == "BYTES" and inputs["input"]["shape"] == [-1, 4, 3, 32, 32]
        outputs = {o["name"]: o for o in model["outputs"]}
        assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}
        assert (await client.get(f"/v2/models/clip/versions/{entry.version}")).status_code == 200
        ready = await client.get("/v2/models/alpha/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        missing = await client.get("/v2/models/nope/ready")
        assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
        old = await client.get("/v2/models/alpha/versions/000000000000")
        assert old.status_code == 404 and "version" in old.json()["error"]
        assert "/v2/models/{task}/infer" in (await client.get("/openapi.json")).json()["paths"]


async def test_server_not_ready_answers_503(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app, ready=False) as client:
        app.state.runtime.state = "loading"  # as while the backbone loads
        r = await client.get("/v2/health/ready")
        assert r.status_code == 503 and r.json() == {"ready": False}
        r = await client.post("/v2/models/alpha/infer", json={"inputs": [bytes_input(png(1))]})
        assert r.status_code == 503 and isinstance(r.json()["error"], str) and r.headers["Retry-After"]
        await app.state.runtime.wait_ready(60)


async def test_infer_bytes_and_tensors_match_predict(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        labels = app.state.adapters.entry("alpha").labels
        version = app.state.adapters.entry("alpha").version
        want = await probabilities(client, "alpha", png(1), png(2))

        # BYTES, base64 in JSON
        r = await client.post("/v2/models/alpha/infer", json={"id": "req-1", "inputs": [bytes_input(png(1), png(2))]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("alpha", version, "req-1")
        check_outputs(body, labels, want)

        # BYTES as a raw string (one character per byte), nested [N, 1] data
        raw = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [[png(1).decode("latin-1")]]}
        r = await client.post(f"/v2/models/alpha/versions/{version}/infer", json={"inputs": [raw]})
        assert r.status_code == 200, r.text
        check_outputs(r.json(), labels, want[:1])
        assert r.json()["id"]  # generated when the request has none

        # FP32, the preprocessed tensor, with only the output asked for
        spec = app.state.adapters.entry("alpha").spec
        x = torch.stack([tensor_of(png(1), spec), tensor_of(png(2), spec)])
        tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}
        r = await client.post("/v2/models/alpha/infer", json={"inputs": [tensor], "outputs": [{"name": "labels"}]})
        assert r.status_code == 200, r.text
        assert [o["name"] for o in r.json()["outputs"]] == ["labels"]
        assert r.json()["outputs"][0]["data"] == [max(w, key=w.__getitem__) for w in want]

        # Triton's binary tensor extension: JSON header, then the raw tensor bytes; binary outputs back
        header = json.dumps(
            {
                "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                            "parameters": {"binary_data_size": x.numel() * 4}}],
                "parameters": {"binary_data_output": True},
            }
        ).encode()  # fmt: skip
        r = await client.post(
            "/v2/models/alpha/infer",
            content=header + x.numpy().astype("<f4").tobytes(),
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        )
        assert r.status_code == 200, r.text
        n = int(r.headers["Inference-Header-Content-Length"])
        head, blob = json.loads(r.content[:n]), r.content[n:]
        probs_size = head["outputs"][0]["parameters"]["binary_data_size"]
        probs = np.frombuffer(blob[:probs_size], dtype="<f4").reshape(head["outputs"][0]["shape"])
        assert probs[1].tolist() == pytest.approx([want[1][label] for label in labels], abs=1e-5)
        (length,) = struct.unpack_from("<I", blob, probs_size)
        assert blob[probs_size + 4 : probs_size + 4 + length].decode() == max(want[0], key=want[0].__getitem__)


async def test_infer_clips(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        entry = app.state.adapters.entry("clip")
        r = await client.post("/predict?task=clip&top_k=10", files=image_files(gif(4)))
        want = [{p["label"]: p["score"] for p in r.json()["predictions"][0]}]
        animated = await client.post("/v2/models/clip/infer", json={"inputs": [bytes_input(gif(4))]})
        assert animated.status_code == 200, animated.text
        check_outputs(animated.json(), entry.labels, want)
        # frames as a [1, 4] BYTES tensor, and the preprocessed [1, 4, 3, 32, 32] FP32 tensor
        frames = [png(i) for i in range(4)]
        r = await client.post("/predict?task=clip&top_k=10", files=image_files(*frames, field="frame"))
        want = [{p["label"]: p["score"] for p in r.json()["predictions"][0]}]
        by_frames = await client.post("/v2/models/clip/infer", json={"inputs": [bytes_input(*frames, shape=[1, 4])]})
        assert by_frames.status_code == 200, by_frames.text
        check_outputs(by_frames.json(), entry.labels, want)
        import io

        from PIL import Image

        x = preprocess_clip([Image.open(io.BytesIO(f)) for f in frames], entry.spec).unsqueeze(0)
        tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}
        r = await client.post("/v2/models/clip/infer", json={"inputs": [tensor]})
        assert r.status_code == 200, r.text
        check_outputs(r.json(), entry.labels, want)


ERROR_CASES = [
    ({"inputs": []}, 400, "exactly one"),
    ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}]}, 400, "INT8"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}]}, 400, "shape"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0]}]}, 400, "values"),
    (
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]},
        400,
        "image",
    ),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, 400, "elements"),
    ({"inputs": [bytes_input(png(1))], "outputs": [{"name": "logits"}]}, 400, "logits"),
    ({"inputs": [bytes_input(png(1), png(2), png(3))]}, 413, "images"),
]


async def test_infer_errors_are_protocol_errors(vit, tasks_store, make_settings):
    app = create_app(make_settings(max_images_per_request=2), backbone=vit)
    async with serving(app) as client:
        for request_body, status, words in ERROR_CASES:
            r = await client.post("/v2/models/alpha/infer", json=request_body)
            assert r.status_code == status, (request_body, r.text)
            assert set(r.json()) == {"error"} and words in r.json()["error"], r.text


async def test_infer_auth_and_unknown_model(vit, tasks_store, make_settings):
    app = create_app(make_settings(api_keys="k1"), backbone=vit)
    async with serving(app) as client:
        body = {"inputs": [bytes_input(png(1))]}
        r = await client.post("/v2/models/alpha/infer", json=body)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "key" in r.json()["error"]
        r = await client.post("/v2/models/alpha/infer", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403
        assert (await client.get("/v2/models/alpha")).status_code == 401
        assert (await client.get("/v2/health/ready")).status_code == 200  # health stays open
        r = await client.post("/v2/models/nope/infer", json=body, headers={"X-API-Key": "k1"})
        assert r.status_code == 404 and isinstance(r.json()["error"], str)
        r = await client.post("/v2/models/alpha/infer", content=b"{nope", headers={"X-API-Key": "k1"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]


@pytest.mark.e2e
def test_tritonclient_against_a_real_server(tmp_path):
    import tritonclient.http as httpclient  # pip install -e ".[dev]"

    def adapters(vit):
        return {"shirts": adapter_bytes(vit, "shirts", seed=1, winner=2)}

    with live_server(tmp_path, adapters) as url:
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("shirts")
        meta = client.get_model_metadata("shirts")
        assert meta["name"] == "shirts" and {i["name"] for i in meta["inputs"]} == {"image", "input"}
        images = np.array([png(1), png(2)], dtype=np.object_)
        for binary in (True, False):  # the binary extension, then JSON (BYTES as strings: base64 here)
            data = images if binary else np.array([b64(i) for i in images], dtype=np.object_)
            infer_input = httpclient.InferInput("image", [2], "BYTES")
            infer_input.set_data_from_numpy(data, binary_data=binary)
            result = client.infer("shirts", [infer_input])
            assert result.as_numpy("probabilities").shape == (2, 4)
            assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("labels")] == ["shirts-2"] * 2
        x = np.zeros((1, 3, 28, 28), dtype=np.float32)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        asked = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
        out = client.infer("shirts", [tensor], outputs=asked).as_numpy("probabilities")
        assert out.shape == (1, 4) and out[0].argmax() == 2
        client.close()
