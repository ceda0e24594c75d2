"""Response bodies of the HTTP API (docs/API_CONTRACT.md), as pydantic models for validation and /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "AdapterInfo",
    "AdapterList",
    "DeleteResponse",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "InputInfo",
    "MultiPredictResponse",
    "PredictResponse",
    "Prediction",
    "Ready",
    "UploadResponse",
]


class Prediction(BaseModel):
    label: str
    score: float = Field(description="softmax probability")


class PredictResponse(BaseModel):
    task: str
    version: str = Field(description="the adapter version that answered (first 12 hex of its file's SHA-256)")
    modality: Literal["image", "clip"]
    predictions: list[list[Prediction]] = Field(description="top-k per input, in request order (one for a clip)")
    latency_ms: float


class MultiPredictResponse(BaseModel):
    results: list[PredictResponse] = Field(description="one single-task answer per task, in the order asked")
    latency_ms: float = Field(description="the whole request, from request to answer")


class InputInfo(BaseModel):
    """What a caller sends: pictures are resized to ``size`` x ``size`` RGB, scaled to [0, 1], then normalised."""

    size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    frames: int = Field(description="frames per clip (1 for an image task)")
    note: str = Field("", description="what else the task expects, e.g. 'a light digit on a dark background'")


class AdapterInfo(BaseModel):
    task: str
    description: str = Field("", description="one line: what the task answers")
    input: InputInfo
    version: str
    method: Literal["adaptformer", "linear"]
    modality: Literal["image", "clip"]
    frames: int
    num_classes: int
    labels: list[str]
    params: int
    percent_of_backbone: float
    size_bytes: int
    backbone: str
    fingerprint: str
    config: dict[str, Any] | None
    metrics: dict[str, Any]
    created: str
    resident: bool


class AdapterList(BaseModel):
    adapters: list[AdapterInfo]


class UploadResponse(BaseModel):
    adapter: AdapterInfo
    replaced: bool
    previous_version: str | None


class DeleteResponse(BaseModel):
    task: str
    deleted: bool
    version: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: str
    backbone: str | None = None
    fingerprint: str | None = None
    adapters: int | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    check: str | None = Field(None, description="only for incompatible adapters: fingerprint, shapes or modality")


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    text = {
        400: "invalid input",
        401: "API key missing",
        403: "API key not valid here",
        404: "unknown task",
        409: "adapter does not fit the backbone",
        413: "payload too large",
        415: "unsupported media type",
        422: "invalid adapter file or request",
        503: "overloaded or not ready (see Retry-After)",
    }
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}
