"""The client's types and the server's response models (``adaptformer_server.schemas``) describe the same JSON:
the same fields, none the server requires missing, and every server body read back unchanged."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import adaptformer_client.types as client_types
from adaptformer_server import schemas

PREDICTION = schemas.PredictResponse(
    task="digits",
    version="0123456789ab",
    modality="image",
    predictions=[[schemas.Prediction(label="7", score=0.9)], [schemas.Prediction(label="1", score=0.5)]],
    latency_ms=3.5,
)
INPUT = schemas.InputInfo(
    size=28, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", frames=4, note="a light digit on dark"
)
INFO = schemas.AdapterInfo(
    task="digits",
    description="handwritten digit 0-9",
    input=INPUT,
    version="0123456789ab",
    method="adaptformer",
    modality="clip",
    frames=4,
    num_classes=2,
    labels=["0", "1"],
    params=12_345,
    percent_of_backbone=0.57,
    size_bytes=50_000,
    backbone="embedded-vit",
    fingerprint="f1n9erpr1nt0",
    config={"bottleneck": 16},
    metrics={"val_top1": 0.9},
    created="2026-11-29T07:00:00+00:00",
    resident=False,
)
VERSION = schemas.VersionInfo(
    version="0123456789ab",
    current=True,
    size_bytes=50_000,
    stored="2026-11-30T17:00:00Z",
    created="2026-11-29T07:00:00+00:00",
    description="handwritten digit 0-9",
    metrics={"val_top1": 0.9},
)
EXAMPLES: dict[str, tuple[type[BaseModel], BaseModel]] = {
    "Prediction": (client_types.Prediction, schemas.Prediction(label="7", score=0.25)),
    "InputInfo": (client_types.InputInfo, INPUT),
    "PredictResponse": (client_types.PredictResponse, PREDICTION),
    "MultiPredictResponse": (
        client_types.MultiPredictResponse,
        schemas.MultiPredictResponse(results=[PREDICTION, PREDICTION.model_copy(update={"task": "b"})], latency_ms=4),
    ),
    "AdapterInfo": (client_types.AdapterInfo, INFO),
    "UploadResponse": (
        client_types.UploadResult,
        schemas.UploadResponse(adapter=INFO, replaced=True, previous_version="ba9876543210"),
    ),
    "DeleteResponse": (client_types.DeleteResult, schemas.DeleteResponse(task="d", deleted=True, version="v")),
    "VersionInfo": (client_types.VersionInfo, VERSION),
    "VersionList": (
        client_types.VersionList,
        schemas.VersionList(task="digits", current="0123456789ab", keep=3, versions=[VERSION]),
    ),
    "RollbackResponse": (
        client_types.RollbackResult,
        schemas.RollbackResponse(adapter=INFO, previous_version="ba9876543210"),
    ),
    "Health": (client_types.Health, schemas.Health(status="ok")),
    "Ready": (client_types.Ready, schemas.Ready(status="ready", backbone="b", fingerprint="f", adapters=3)),
}


def test_every_response_model_of_the_server_is_covered() -> None:
    # Request bodies: the client builds its own as JSON, and sends no Open Inference Protocol request.
    requests = ("RegisterRequest", "RollbackRequest", "InferenceRequest", "RequestInput", "RequestOutput")
    skipped = ("ErrorDetail", "ErrorResponse", "AdapterList", *requests)
    models = {name for name in schemas.__all__ if name not in skipped}
    assert models == set(EXAMPLES)  # errors: test_client_errors.py; the list: a list of AdapterInfo


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_client_type_has_the_server_fields(name: str) -> None:
    client_cls, example = EXAMPLES[name]
    server_fields = type(example).model_fields
    assert set(client_cls.model_fields) == set(server_fields), name
    optional_here = {f for f, info in client_cls.model_fields.items() if not info.is_required()}
    always_sent = {f for f, info in server_fields.items() if info.is_required()}
    # a field the server may leave out must not be required by the client
    assert {f for f in server_fields if f not in always_sent} <= optional_here, name


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_server_bodies_read_back_unchanged(name: str) -> None:
    client_cls, example = EXAMPLES[name]
    body = example.model_dump(mode="json")
    assert client_cls.model_validate(body).model_dump(mode="json") == body
