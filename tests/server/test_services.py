"""The service layer: one inference service behind /predict and /v2 infer, uploads through the adapter manager,
and one mapping of errors to answers."""

from __future__ import annotations

import pytest
import torch
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from adaptformer.errors import AdapterFormatError, DataError, IncompatibleAdapterError, InputTooLargeError
from adaptformer_server import create_app
from adaptformer_server.errors import (
    CLIENT_CLOSED,
    InvalidInput,
    InvalidTaskName,
    NotFound,
    UnknownVersion,
    as_api_error,
    status_of,
)
from adaptformer_server.inputs import PredictBody
from adaptformer_server.services import Replacement
from tests.support import adapter_bytes, image_files, png, serving


def predictions(app, task: str, status: str) -> float:
    return app.state.metrics.predictions.labels(task, status)._value.get()


async def test_the_inference_service_answers_as_predict_does(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        body = PredictBody(images=[png(1), png(2)])
        async with app.state.inference.admit(["alpha"]) as admitted:
            done = await app.state.inference.infer(admitted, body)
        ((entry, logits),) = done.results
        assert done.payload is body and entry == app.state.adapters.entry("alpha")
        assert [tuple(x.shape) for x in logits] == [(4,), (4,)]
        assert predictions(app, "alpha", "200") == 1

        r = await client.post("/predict?task=alpha&top_k=1", files=image_files(png(1)))
        assert r.status_code == 200 and predictions(app, "alpha", "200") == 2
        (top,) = r.json()["predictions"][0]
        probs = torch.softmax(logits[0], -1)
        assert top["label"] == entry.labels[int(probs.argmax())]
        assert top["score"] == pytest.approx(float(probs.max()), abs=1e-4)

        r = await client.post(
            "/v2/models/alpha/infer", json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}
        )
        assert r.status_code == 400 and predictions(app, "alpha", "400") == 1  # counted by the same service


async def test_names_and_versions_are_checked_before_the_body_is_read(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app):
        inference = app.state.inference

        async def never(names: list[str], version: str | None = None) -> None:
            async with inference.admit(names, version=version):
                raise AssertionError("the body was read after a failed check")

        with pytest.raises(InvalidTaskName):
            await never(["../alpha"])
        with pytest.raises(NotFound, match="unknown task 'nope'"):
            await never(["nope"])
        with pytest.raises(UnknownVersion, match="has no version '000000000000'"):
            await never(["alpha"], version="000000000000")
        assert predictions(app, "_unknown", "400") == 1 and predictions(app, "_unknown", "404") == 2


async def test_the_adapter_manager_uploads_and_replaces(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        adapters = app.state.adapters
        first = await adapters.upload(adapter_bytes(vit, "gamma", seed=5), None)
        assert isinstance(first, Replacement) and first.previous is None and adapters.resident(first.entry)
        second = await adapters.upload(adapter_bytes(vit, "gamma", seed=6), "gamma")
        assert second.previous == first.entry and adapters.entry("gamma") == second.entry
        assert (await client.get("/adapters/gamma")).json()["version"] == second.entry.version
        assert [v["version"] for v in (await adapters.versions("gamma"))["versions"]] == [
            second.entry.version,
            first.entry.version,
        ]


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (InvalidInput("x"), 400, "invalid_input"),
        (DataError("an unreadable image"), 400, "invalid_input"),
        (InputTooLargeError("too many pixels"), 413, "payload_too_large"),
        (AdapterFormatError("not safetensors"), 422, "invalid_adapter"),
        (IncompatibleAdapterError("another backbone", check="fingerprint"), 409, "incompatible_adapter"),
        (MultiPartException("Too many files. Maximum number of files is 3."), 413, "payload_too_large"),
        (MultiPartException("Missing boundary in multipart."), 400, "invalid_input"),
    ],
)
def test_one_mapping_of_errors_to_answers(exc, status, code):
    err = as_api_error(exc)
    assert err is not None and (err.status, err.code) == (status, code) and status_of(exc) == status
    if isinstance(exc, IncompatibleAdapterError):
        assert err.check == "fingerprint"


def test_what_is_not_mapped():
    assert as_api_error(KeyError("a bug")) is None and status_of(KeyError("a bug")) == 500
    assert as_api_error(ClientDisconnect()) is None and status_of(ClientDisconnect()) == CLIENT_CLOSED
