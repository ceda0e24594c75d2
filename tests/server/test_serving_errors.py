"""The inference service and the batcher raise errors in their own terms (a task, a version, a count: no status,
no route); ``errors.as_api_error`` alone answers them, naming the route to call instead. The service counts every
prediction metric of a request, whichever step fails, and a route only admits, parses, runs and answers."""

from __future__ import annotations

import re

import pytest

from adaptformer_server import create_app
from adaptformer_server.errors import (
    InvalidTaskName,
    NonFiniteScores,
    NoTaskNamed,
    NoTaskToServe,
    ServingError,
    TooManySamples,
    UnknownVersion,
    VersionReplaced,
    as_api_error,
    status_of,
)
from adaptformer_server.inputs import PredictBody
from adaptformer_server.tier import wire
from tests.support import image_files, png, serving

ROUTE = re.compile(r"\b(GET|POST|PUT|DELETE) /")


@pytest.mark.parametrize(
    ("exc", "status", "code", "words"),
    [
        (InvalidTaskName("../x"), 400, "invalid_input", ["not a valid task name", "GET /adapters/{task}/versions"]),
        (NoTaskNamed(), 400, "invalid_input", ["needs a `task`"]),
        (UnknownVersion("a", "0" * 12, "1" * 12), 404, "not_found", ["has no version", "GET /v2/models/a"]),
        (VersionReplaced("a", "0" * 12), 404, "not_found", ["was replaced"]),
        (NoTaskToServe(), 404, "not_found", ["this server has none", "GET /adapters"]),
        (NoTaskToServe(servable=True), 404, "not_found", ["none can be served now"]),
        (TooManySamples(90, 3, 64), 413, "payload_too_large", ["90 samples (3 tasks)", "at most 64"]),
        (NonFiniteScores("a@1"), 422, "invalid_adapter", ["non-finite scores", "POST /adapters"]),
    ],
)
def test_serving_errors_are_answered_by_the_one_mapping(exc: ServingError, status, code, words):
    assert not ROUTE.search(str(exc)), str(exc)  # the error itself names no route
    err = as_api_error(exc)
    assert err is not None and (err.status, err.code) == (status, code) and status_of(exc) == status
    for w in words:
        assert w in err.message, (w, err.message)
    sent = wire.decode_error(wire.encode_error(exc))  # from an engine process to a front: the same answer
    assert (sent.status, sent.code, sent.message) == (err.status, err.code, err.message)


def predictions(app, task: str, status: str) -> float | None:
    return app.state.metrics.registry.get_sample_value(
        "adaptformer_predict_requests_total", {"task": task, "status": status}
    )


def task_latency_count(app, task: str, outcome: str) -> float | None:
    labels = {"task": task, "outcome": outcome}
    return app.state.metrics.registry.get_sample_value("adaptformer_task_request_seconds_count", labels)


async def test_the_service_counts_each_request_once_whichever_step_fails(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        inference = app.state.inference
        async with inference.admit(["alpha", "beta"]) as admitted:
            assert admitted.tasks == ["alpha", "beta"] and not admitted.optional
            assert [e.task for e in admitted.entries] == ["alpha", "beta"]
            done = await inference.infer(admitted, PredictBody(images=[png(1)]))
        assert [entry.task for entry, _ in done.results] == ["alpha", "beta"]
        assert predictions(app, "alpha", "200") == 1 and predictions(app, "beta", "200") == 1
        assert task_latency_count(app, "alpha", "ok") == 1  # the per-task latency too: no HTTP request was made

        with pytest.raises(RuntimeError):  # a failure in the route's own steps is counted as the 500 it becomes
            async with inference.admit(["alpha"]):
                raise RuntimeError("the route failed")
        assert predictions(app, "alpha", "500") == 1

        async with inference.admit(["*"]) as admitted:
            assert admitted.optional == {"alpha", "beta"}  # `*` stands for them: left out, not failed
        r = await client.post("/predict?task=alpha", files=image_files(png(1)) + image_files(png(2), field="frame"))
        assert r.status_code == 400  # the body's parse fails inside the service's count
        assert predictions(app, "alpha", "400") == 1
        assert task_latency_count(app, "alpha", "error") == 2
