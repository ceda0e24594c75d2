"""Response bodies of the HTTP API (docs/API_CONTRACT.md), as pydantic models for validation and /docs; the JSON
request bodies, and the Open Inference Protocol's inference request."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

__all__ = [
    "AdapterInfo",
    "AdapterList",
    "DeleteResponse",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "InferenceRequest",
    "InputInfo",
    "MultiPredictResponse",
    "PredictResponse",
    "Prediction",
    "Ready",
    "RegisterRequest",
    "RequestInput",
    "RequestOutput",
    "RollbackRequest",
    "RollbackResponse",
    "UploadResponse",
    "VersionInfo",
    "VersionList",
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


# -- the Open Inference Protocol (KServe v2) inference request: the fields this server reads ---------------------
_MAX_DIM = 2**31 - 1  # the largest tensor dimension a request may declare


def _object_or_null(value: Any) -> Any:
    return {} if value is None else value


class RequestParameters(BaseModel):
    binary_data_output: bool = Field(False, description="answer every output as binary data (Triton's extension)")


class InputParameters(BaseModel):
    content_type: str | None = Field(None, description="BYTES data in JSON: `base64` or `str` (default: either)")
    binary_data_size: Annotated[int, Field(strict=True, ge=0)] | None = Field(
        None, description="the input's data is this many bytes of the binary part, after the JSON header"
    )


class OutputParameters(BaseModel):
    binary_data: bool | None = Field(None, description="answer this output as binary data")


class RequestInput(BaseModel):
    """One input tensor: ``shape`` and either ``data`` (JSON, row-major, nested or flat) or binary data."""

    name: str = "input"
    shape: list[Annotated[int, Field(strict=True, ge=0, le=_MAX_DIM)]] = Field(min_length=1)
    parameters: Annotated[InputParameters, BeforeValidator(_object_or_null)] = Field(default_factory=InputParameters)
    datatype: Literal["BYTES", "FP32"]
    data: Any = None


class RequestOutput(BaseModel):
    name: Literal["probabilities", "labels"]
    parameters: Annotated[OutputParameters, BeforeValidator(_object_or_null)] = Field(default_factory=OutputParameters)


class InferenceRequest(BaseModel):
    """``POST /v2/models/{task}/infer``'s JSON document (or the header of Triton's binary tensor extension)."""

    id: str | None = None
    parameters: Annotated[RequestParameters, BeforeValidator(_object_or_null)] = Field(
        default_factory=RequestParameters
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(None, min_length=1)


class InputInfo(BaseModel):
    """What a caller sends: pictures are resized to ``size`` x ``size`` RGB, scaled to [0, 1], then normalised."""

    size: int = Field(description="pixels of each side after resizing (RGB)")
    mean: list[float] = Field(description="per-channel mean subtracted after scaling to [0, 1]")
    std: list[float] = Field(description="per-channel standard deviation each channel is divided by, after the mean")
    interpolation: str = Field(description="the resize filter, e.g. 'bicubic'")
    frames: int = Field(description="frames per clip (1 for an image task)")
    note: str = Field("", description="what else the task expects, e.g. 'a light digit on a dark background'")


class AdapterInfo(BaseModel):
    task: str = Field(description="the name to predict with (`?task=`)")
    description: str = Field("", description="one line: what the task answers")
    input: InputInfo = Field(
        description="what to send: size, normalisation, frames; `note` is empty for files that carry none"
    )
    version: str = Field(description="the current version: first 12 hex digits of the SHA-256 of its file")
    method: Literal["adaptformer", "linear"] = Field(description="AdaptFormer branches and head, or a linear probe")
    modality: Literal["image", "clip"] = Field(description="what the task reads: one picture or a clip of frames")
    frames: int = Field(description="frames per clip (1 for an image task)")
    num_classes: int = Field(description="the width of the head; as many as `labels`")
    labels: list[str] = Field(description="class names, in the head's order")
    params: int = Field(description="parameters the task adds to the backbone (branches, head, temporal part)")
    percent_of_backbone: float = Field(description="`params` in % of the served backbone's parameters")
    size_bytes: int = Field(description="bytes of the adapter file")
    backbone: str = Field(description="the backbone the adapter was trained on, by name")
    fingerprint: str = Field(description="the fingerprint of that backbone's weights; equal to `/readyz`'s")
    config: dict[str, Any] | None = Field(description="the branch configuration; null for a linear probe")
    metrics: dict[str, Any] = Field(description="what training recorded in the file, e.g. `val_top1`")
    created: str = Field(description="when the file was written (ISO 8601, from its metadata)")
    resident: bool = Field(description="loaded and ready to run now; otherwise the next request pages it in")


class AdapterList(BaseModel):
    adapters: list[AdapterInfo] = Field(description="sorted by task name; without `limit`, every task that matches")
    next_cursor: str | None = Field(
        None, description="with `limit` or `cursor` only: pass it as `cursor` for the next page; null on the last page"
    )


class UploadResponse(BaseModel):
    adapter: AdapterInfo
    replaced: bool
    previous_version: str | None


class VersionInfo(BaseModel):
    version: str = Field(description="first 12 hex of the file's SHA-256")
    current: bool = Field(description="whether /predict?task=NAME answers with this version")
    size_bytes: int
    stored: str = Field(description="when this version entered the store (UTC, ISO 8601); the order of the list")
    created: str = Field(description="when the adapter was trained, as its file records it")
    description: str = ""
    metrics: dict[str, Any] = Field(description="training metrics recorded in the file")


class VersionList(BaseModel):
    task: str
    current: str = Field(description="the current version")
    keep: int = Field(description="versions this server keeps per task (keep_versions)")
    versions: list[VersionInfo] = Field(description="newest first")


class RollbackRequest(BaseModel):
    version: str | None = Field(None, description="the kept version to make current (default: the one before)")


class RollbackResponse(BaseModel):
    adapter: AdapterInfo
    previous_version: str = Field(description="the version that was current before")


class SplitRequest(BaseModel):
    versions: dict[str, Any] = Field(
        description='kept version -> weight (> 0, the weights summing to 1), e.g. {"3f2a9c1b7d4e": 0.9, ...}'
    )


class SplitInfo(BaseModel):
    task: str
    current: str = Field(description="the current version")
    active: bool = Field(description="whether a split is set (else the current version serves every request)")
    versions: dict[str, float] = Field(description="version -> share of the unpinned requests")


class PromoteRequest(BaseModel):
    version: str = Field(description="the version of the split to make current")


class PromoteResponse(BaseModel):
    adapter: AdapterInfo
    previous_version: str = Field(description="the version that was current before")


class RegisterRequest(BaseModel):
    task: str | None = Field(None, description="task name (default: the one in the file)")
    source: str = Field(description="https://, http://, file:// or hf://owner/repo/file[@revision] of the file")
    sha256: str | None = Field(None, description="hex SHA-256 the fetched bytes must have")


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
        502: "the adapter source answered an error or cannot be reached",
        503: "overloaded or not ready (see Retry-After)",
        504: "the adapter source did not deliver in time",
    }
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}


def form_body(
    properties: dict[str, Any],
    *,
    required: list[str] | None = None,
    description: str | None = None,
    other: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI request body (``openapi_extra``) of a route that reads its multipart form itself.

    Args:
        properties: The form's fields (JSON schemas).
        required: Fields that must be present.
        description: Of the whole body.
        other: Other media types the route takes (``{media type: {"schema": ...}}``).
    """
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = required
    schema["properties"] = properties
    body: dict[str, Any] = {"required": True}
    if description:
        body["description"] = description
    body["content"] = {"multipart/form-data": {"schema": schema}, **(other or {})}
    return {"requestBody": body}
