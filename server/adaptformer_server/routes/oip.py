"""The Open Inference Protocol (KServe v2) REST API: ``/v2``, health, model metadata, Triton's model
configuration extension (``/config``) and ``infer``.

A model is a task; its version is the adapter version. ``infer`` takes one input: encoded images as ``BYTES``
(base64 or raw strings in JSON, or Triton's binary tensor extension) or a preprocessed ``FP32`` tensor
``[N, 3, H, W]`` (``[N, T, 3, H, W]`` for a clip task), and answers ``probabilities`` (FP32 ``[N, classes]``)
and ``labels`` (BYTES ``[N]``, the top-1 label). Auth, limits, decoding and batching are those of ``/predict``;
errors are the protocol's ``{"error": "<message>"}`` with the same statuses. The metadata and the configuration
are built from one description of the inputs and outputs, so they agree on shapes and on which inputs a request
needs (the two inputs are optional alternatives; ``X-Model-Inputs`` narrows both documents to one).

The request document is :class:`~adaptformer_server.schemas.InferenceRequest`. What it may cost is refused before
it is spent: a JSON text of more values than a request for the task can need before it is parsed (a large one is
parsed on a worker thread), then a shape beyond the limits, or binary sizes beyond the body, before its data is
read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import struct
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from adaptformer.preprocess import InputSpec
from adaptformer_server import __version__, tracing
from adaptformer_server.backbone import BackboneError, resolve_device
from adaptformer_server.deps import Inference, PredictAuth, PredictRoute, RuntimeDep, inference_of
from adaptformer_server.errors import InvalidInput, ValidationFailed, as_api_error
from adaptformer_server.inputs import Decoder, PredictBody, decode_inputs
from adaptformer_server.limits import Limits
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.schemas import InferenceRequest, RequestInput
from adaptformer_server.settings import Settings

__all__ = ["router"]

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUTS = ("probabilities", "labels")
_EXTENSIONS = ["binary_tensor_data", "model_configuration"]
_THREAD_BYTES = 1 << 20  # a JSON text longer than this is parsed on a worker thread
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (its commas are no separators)


class OIPRoute(APIRoute):
    """Answers errors as the protocol's ``{"error": "<message>"}`` (status and headers as the rest of the API)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                parts = [f"{'.'.join(str(p) for p in x.get('loc', ()))}: {x.get('msg', 'invalid')}" for x in e.errors()]
                return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 400)
            except Exception as e:
                err = as_api_error(e)  # the mapping of every other route, in the protocol's shape
                if err is None:
                    raise
                return JSONResponse({"error": err.message}, err.status, headers=err.headers)

        return route


class OIPPredictRoute(OIPRoute, PredictRoute):
    """``infer``: the key and readiness checks of :class:`PredictRoute`, errors in the protocol's shape."""


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=OIPRoute)


# -- server and model metadata ---------------------------------------------------------------------------------
@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return {"name": "adaptformer-serve", "version": __version__, "extensions": _EXTENSIONS}


@router.get("/health/live", summary="Server live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server ready: the backbone is loaded", responses={503: {}})
async def ready(runtime: RuntimeDep) -> Response:
    if runtime.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False}, 503, headers={"Retry-After": "5"})


@dataclass(frozen=True)
class _Tensor:
    """One input or output of a model: its name, KServe datatype and dims after the batch dimension (``-1``: any
    size); ``optional``: an input that is one of two alternatives (a request sends exactly one of them)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False


_CONFIG_TYPES = {"FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}  # the model configuration's names
INPUTS_HEADER = "X-Model-Inputs"
INPUTS = ("image", "input")


def _tensors(entry: AdapterEntry, only: str | None = None) -> tuple[list[_Tensor], list[_Tensor]]:
    """A task's inputs and outputs: the one description the model metadata and the model configuration share.

    ``image`` is ``[N, 1]`` encoded images for an image task (``[N]`` is accepted too) and ``[N, -1]`` for a clip
    task (1: one animated image per clip; ``frames``: the frame images); ``input`` is the preprocessed tensor.
    They are alternatives, so both are optional; ``only`` names the one a caller will send (then required)."""
    spec = entry.spec
    s = spec.size
    image = (1,) if spec.modality == "image" else (-1,)
    tensor = (3, s, s) if spec.modality == "image" else (spec.frames, 3, s, s)
    inputs = [_Tensor("image", "BYTES", image, optional=True), _Tensor("input", "FP32", tensor, optional=True)]
    if only is not None:
        inputs = [_Tensor(t.name, t.datatype, t.dims) for t in inputs if t.name == only]
    outputs = [_Tensor("probabilities", "FP32", (len(entry.labels),)), _Tensor("labels", "BYTES", ())]
    return inputs, outputs


def _only_input(request: Request) -> str | None:
    """The one input ``X-Model-Inputs`` names (a tool that sends every input the model lists, as perf_analyzer
    with generated data does, sees only that one), or ``None``: both, each optional."""
    value = request.headers.get(INPUTS_HEADER)
    if value is None:
        return None
    names = {n.strip() for n in value.split(",") if n.strip()}
    if not names or not names <= set(INPUTS):
        raise InvalidInput(f"{INPUTS_HEADER} names this model's inputs: `image` or `input` (or both), got {value!r}")
    return names.pop() if len(names) == 1 else None


def _model_metadata(entry: AdapterEntry, only: str | None = None) -> dict:
    spec = entry.spec
    inputs, outputs = _tensors(entry, only)
    return {
        "name": entry.task,
        "versions": [entry.version],
        "platform": "adaptformer",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]} for t in inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.dims]} for t in outputs],
        "parameters": {
            "modality": spec.modality,
            "frames": spec.frames,
            "labels": entry.labels,
            "input_note": "send one input: `image` (encoded images; for a clip task one animated GIF/WebP per "
            "element, or shape [N, frames] of frame images) or `input` (preprocessed FP32 tensor)",
        },
    }


@router.get("/models/{task}", summary="Model metadata", responses={404: {}})
@router.get("/models/{task}/versions/{version}", summary="Model metadata (one version)", responses={404: {}})
async def model_metadata(
    request: Request, response: Response, task: str, _: PredictAuth, inference: Inference, version: str | None = None
) -> dict:
    response.headers["Vary"] = INPUTS_HEADER
    return _model_metadata(inference.lookup(task, version), _only_input(request))


def _instance_kind(device: str) -> str:
    """Triton's instance kind of the device the backbone runs on."""
    try:
        kind = resolve_device(device).type
    except BackboneError:
        return "KIND_MODEL"
    return "KIND_GPU" if kind == "cuda" else "KIND_CPU"


def _model_config(entry: AdapterEntry, settings: Settings, only: str | None = None) -> dict:
    """Triton's model configuration (its JSON form) of a task: the fields tools read (perf_analyzer, the model
    analyzer), from the same description as the metadata and from the server's batching settings."""
    inputs, outputs = _tensors(entry, only)
    return {
        "name": entry.task,
        "platform": "adaptformer",
        "backend": "adaptformer",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        "input": [
            {
                "name": t.name,
                "data_type": _CONFIG_TYPES[t.datatype],
                "format": "FORMAT_NONE",
                "dims": list(t.dims),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": t.optional,
            }
            for t in inputs
        ],
        "output": [
            {"name": t.name, "data_type": _CONFIG_TYPES[t.datatype], "dims": list(t.dims), "is_shape_tensor": False}
            for t in outputs
        ],
        # The batcher runs a batch when it is full or its first sample has waited max_wait_ms.
        "dynamic_batching": {
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": round(settings.max_wait_ms * 1000),
            "preserve_ordering": False,
            "default_queue_policy": {"max_queue_size": settings.queue_size},
        },
        "instance_group": [{"name": entry.task, "kind": _instance_kind(settings.device), "count": 1}],
        "model_transaction_policy": {"decoupled": False},
        "parameters": {
            "version": {"string_value": entry.version},
            "modality": {"string_value": entry.spec.modality},
            "frames": {"string_value": str(entry.spec.frames)},
            "max_images_per_request": {"string_value": str(settings.max_images_per_request)},
        },
    }


@router.get("/models/{task}/config", summary="Model configuration (Triton's extension)", responses={400: {}, 404: {}})
@router.get(
    "/models/{task}/versions/{version}/config",
    summary="Model configuration (Triton's extension, one version)",
    responses={400: {}, 404: {}},
)
async def model_config(
    request: Request, response: Response, task: str, _: PredictAuth, inference: Inference, version: str | None = None
) -> dict:
    response.headers["Vary"] = INPUTS_HEADER
    return _model_config(inference.lookup(task, version), inference.settings, _only_input(request))


@router.get("/models/{task}/ready", summary="Model ready", responses={404: {}})
@router.get("/models/{task}/versions/{version}/ready", summary="Model ready (one version)", responses={404: {}})
async def model_ready(task: str, _: PredictAuth, inference: Inference, version: str | None = None) -> dict:
    entry = inference.lookup(task, version)
    return {"name": entry.task, "version": entry.version, "ready": True}


# -- inference --------------------------------------------------------------------------------------------------
def _flatten(data: Any) -> list[Any]:
    """Row-major elements of a (possibly nested) JSON ``data`` array."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_element(value: Any, content_type: str | None) -> bytes:
    """A BYTES element given in JSON: base64 (``content_type: base64`` or auto-detected) or a raw string."""
    if not isinstance(value, str):
        raise InvalidInput("BYTES data must be strings (base64-encoded image files, or raw strings)")
    if content_type != "str":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            if content_type == "base64":
                raise InvalidInput("BYTES data is not valid base64 (the input's content_type says base64)") from None
    try:
        return value.encode("latin-1")  # raw bytes sent as one character per byte
    except UnicodeEncodeError:
        return value.encode()


def _deserialize_bytes(blob: bytes) -> list[bytes]:
    """Triton's binary BYTES tensor: each element is a 4-byte little-endian length and that many bytes."""
    out, i = [], 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise InvalidInput("binary BYTES data is truncated (an element length needs 4 bytes)")
        (n,) = struct.unpack_from("<I", blob, i)
        i += 4
        if i + n > len(blob):
            raise InvalidInput("binary BYTES data is truncated (an element is longer than the data left)")
        out.append(blob[i : i + n])
        i += n
    return out


def _serialize_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


@dataclass(frozen=True)
class _Request:
    """One inference request: its document and its one input's binary data (``None``: the data is in JSON)."""

    doc: InferenceRequest
    blob: bytes | None

    @property
    def input(self) -> RequestInput:
        return self.doc.inputs[0]

    @property
    def outputs(self) -> list[tuple[str, bool]]:
        """The outputs asked for, in order, and whether each is answered as binary data."""
        default = self.doc.parameters.binary_data_output
        if self.doc.outputs is None:
            return [(name, default) for name in OUTPUTS]
        return [
            (o.name, default if o.parameters.binary_data is None else o.parameters.binary_data)
            for o in self.doc.outputs
        ]

    def pixels(self, decoder: Decoder) -> int:
        """Always decoded off the event loop (the elements are not probed before decoding)."""
        return decoder.settings.inline_decode_pixels + 1

    def decode(self, entries: list[AdapterEntry], decoder: Decoder) -> list[list[torch.Tensor]]:
        """The model inputs of the request's one task (blocking); its shape is checked before its data is read."""
        (entry,) = entries
        if self.input.datatype == "BYTES":
            return [_bytes_inputs(self, entry, decoder)]
        return [_tensor_inputs(self, entry, decoder.limits)]


def _json_values(text: bytes, most: int) -> int:
    """At most how many values a JSON text holds: one more than its commas, not counting those in strings where
    that matters (more than ``most``)."""
    count = text.count(b",") + 1
    if count > most:
        count = _STRING.sub(b'""', text).count(b",") + 1
    return count


def _loads(text: bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the inference request is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidInput(
            "the inference request's JSON is nested too deeply (arrays or objects in arrays...)"
        ) from None


async def _read(request: Request, limits: Limits, entry: AdapterEntry) -> _Request:
    """Reads and checks an inference request for ``entry``'s task (the body is bounded by the body limit)."""
    raw = await request.body()
    length = request.headers.get(HEADER_LENGTH)
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} is not a number") from None
        if not 0 < n <= len(raw):
            raise InvalidInput(f"{HEADER_LENGTH} {n} does not fit a body of {len(raw)} bytes")
        header, binary = raw[:n], raw[n:]
    else:
        header, binary = raw, b""
    limits.check_json_values(_json_values(header, limits.json_values(entry.spec)), entry.spec, entry.task)
    doc = await asyncio.to_thread(_loads, header) if len(header) > _THREAD_BYTES else _loads(header)
    try:
        req = InferenceRequest.model_validate(doc)
    except ValidationError as e:
        raise _invalid(e, doc) from None
    tensor = req.inputs[0]
    size = tensor.parameters.binary_data_size
    if size is not None:
        if size > len(binary):
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size {size!r} does not fit the binary data sent")
        return _Request(req, binary[:size])
    if "data" not in tensor.model_fields_set:
        raise InvalidInput(f"input {tensor.name!r} has no `data` (nor binary_data_size)")
    return _Request(req, None)


def _invalid(e: ValidationError, doc: Any) -> InvalidInput:
    """The protocol's 400 for the first error of a request document, said for the field it is in."""
    err = e.errors()[0]
    loc = tuple(str(part) for part in err["loc"])
    value = None if err["type"] == "missing" else err["input"]
    if not loc:
        return InvalidInput("the inference request must be a JSON object with an `inputs` array")
    if loc in (("id",), ("parameters",)):
        return InvalidInput(f"`{loc[0]}` must be {'a string' if loc[0] == 'id' else 'an object'}")
    if loc[0] == "inputs" and len(loc) <= 2:
        return InvalidInput(
            "`inputs` must hold exactly one tensor: `image` (BYTES, encoded images) or `input` (FP32, preprocessed)"
        )
    name, field = _input_name(doc), loc[2:]
    if loc[0] == "inputs" and field == ("name",):
        return InvalidInput("an input's `name` must be a string")
    if loc[0] == "inputs" and field[0] == "shape":
        return InvalidInput(f"input {name!r}: `shape` must be a non-empty list of non-negative integers")
    if loc[0] == "inputs" and field == ("datatype",):
        return InvalidInput(
            f"input {name!r}: datatype {value!r} is not accepted; send BYTES (encoded images) or FP32 "
            "(a preprocessed tensor)"
        )
    if loc[0] == "inputs" and field == ("parameters",):
        return InvalidInput(f"input {name!r}: `parameters` must be an object")
    if loc[0] == "inputs" and field == ("parameters", "binary_data_size"):
        return InvalidInput(f"input {name!r}: binary_data_size {value!r} does not fit the binary data sent")
    if loc[0] == "outputs" and field == ("name",):
        return InvalidInput(f"unknown output {value!r}; this model has outputs {list(OUTPUTS)}")
    if loc[0] == "outputs":
        return InvalidInput('`outputs` must be a non-empty array of {"name": ...} objects')
    return InvalidInput(f"`{'.'.join(loc)}`: {err['msg']}")


def _input_name(doc: Any) -> Any:
    """The name of a request's first input, as sent (``input`` by default)."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    first = inputs[0] if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict) else {}
    return first.get("name", "input")


def _tensor_inputs(req: _Request, entry: AdapterEntry, limits: Limits) -> list[torch.Tensor]:
    """A preprocessed FP32 tensor: [N, 3, S, S] (image task) or [N, T, 3, S, S] (clip task)."""
    spec = entry.spec
    s = spec.size
    name, shape = req.input.name, req.input.shape
    want = [3, s, s] if spec.modality == "image" else [spec.frames, 3, s, s]
    if shape[1:] != want or shape[0] < 1:
        raise InvalidInput(
            f"input {name!r}: task {entry.task!r} takes FP32 shape [N, {', '.join(map(str, want))}], got {shape}"
        )
    limits.check_images(shape[0], "inputs")
    count = math.prod(shape)
    if req.blob is not None:
        if len(req.blob) != 4 * count:
            raise InvalidInput(f"input {name!r}: {len(req.blob)} bytes of FP32 data for shape {shape}")
        x = torch.from_numpy(np.frombuffer(req.blob, dtype="<f4").copy())
    else:
        values = _flatten(req.input.data)
        if len(values) != count:
            raise InvalidInput(f"input {name!r}: {len(values)} values for shape {shape} ({count})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise InvalidInput(f"input {name!r}: FP32 data must be numbers")
        try:
            x = torch.tensor(values, dtype=torch.float32)
        except (OverflowError, RuntimeError):  # an integer beyond any float (JSON allows 1000... digits)
            raise InvalidInput(f"input {name!r}: FP32 data holds a number beyond the FP32 range") from None
    if not torch.isfinite(x).all():
        raise InvalidInput(f"input {name!r}: FP32 data holds NaN or infinite values (or numbers beyond the FP32 range)")
    _check_range(name, x, spec)
    return list(x.reshape(shape).unbind(0))


def _check_range(name: str, x: torch.Tensor, spec: InputSpec) -> None:
    """422 for values no preprocessed image can hold, before they reach the model (where they would overflow
    and look like a broken adapter). Preprocessing scales pixels to [0, 1], subtracts the mean and divides by
    the std; the range accepted has a margin of one pixel range on each side ([-1, 2] before normalising)."""
    lo = min((-1.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    hi = max((2.0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
    low, high = float(x.min()), float(x.max())
    if low < lo or high > hi:
        bad = low if low < lo else high
        raise ValidationFailed(
            f"input {name!r}: FP32 value {bad:g} is out of the range a preprocessed image can hold for this task "
            f"([{lo:.3g}, {hi:.3g}]: pixels in [0, 1] minus mean {list(spec.mean)}, divided by std "
            f"{list(spec.std)}, with a margin); send preprocessed images, or the encoded images as BYTES"
        )


def _bytes_inputs(req: _Request, entry: AdapterEntry, decoder: Decoder) -> list[torch.Tensor]:
    """Encoded images: one per element for an image task; for a clip task one animated image per element, or
    rows of frame images (shape [N, T]). One decoder, so one pixel budget, for the whole request."""
    settings, limits, spec = decoder.settings, decoder.limits, entry.spec
    name, shape = req.input.name, req.input.shape
    rows = spec.modality == "clip" and len(shape) > 1 and shape[1:] != [1]
    if not rows:
        limits.check_images(math.prod(shape), "images" if spec.modality == "image" else "clips")
    elif len(shape) != 2:
        raise InvalidInput(f"input {name!r}: BYTES shape must be [N] or, for a clip task, [N, frames]")
    else:
        limits.check_frames(shape[1])
        limits.check_images(shape[0], "clips")
    if req.blob is not None:
        elements = _deserialize_bytes(req.blob)
    else:
        elements = [_bytes_element(v, req.input.parameters.content_type) for v in _flatten(req.input.data)]
    if len(elements) != math.prod(shape) or not elements:
        raise InvalidInput(f"input {name!r}: {len(elements)} elements for shape {shape}")
    if spec.modality == "image":
        return decode_inputs(PredictBody(images=elements), spec, entry.task, settings, decoder=decoder)
    if not rows:
        return [
            x
            for e in elements
            for x in decode_inputs(PredictBody(images=[e]), spec, entry.task, settings, decoder=decoder)
        ]
    t = shape[1]
    return [
        x
        for i in range(shape[0])
        for x in decode_inputs(
            PredictBody(frames=elements[i * t : (i + 1) * t]), spec, entry.task, settings, decoder=decoder
        )
    ]


def _respond(req: _Request, entry: AdapterEntry, logits: list[torch.Tensor], latency_ms: float) -> Response:
    probs = torch.stack([torch.softmax(o.float(), dim=-1) for o in logits])
    labels = entry.labels
    top = [labels[i] for i in probs.argmax(dim=-1).tolist()]
    outputs, blobs = [], []
    for name, binary in req.outputs:
        if name == "probabilities":
            out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(probs.shape)}
            blob = probs.numpy().astype("<f4").tobytes() if binary else None
            data: list[Any] = probs.flatten().tolist()
        else:
            out = {"name": name, "datatype": "BYTES", "shape": [len(top)]}
            blob = _serialize_bytes([t.encode() for t in top]) if binary else None
            data = top
        if blob is not None:
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = data
        outputs.append(out)
    body = {
        "model_name": entry.task,
        "model_version": entry.version,
        "id": req.doc.id if req.doc.id is not None else uuid.uuid4().hex,
        "parameters": {"latency_ms": latency_ms},
        "outputs": outputs,
    }
    if not blobs:
        return JSONResponse(body)
    header = json.dumps(body).encode()
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


_Endpoint = Callable[..., Coroutine[Any, Any, Response]]


def _predict_post(
    path: str, summary: str, responses: dict[int | str, dict[str, Any]]
) -> Callable[[_Endpoint], _Endpoint]:
    """``@router.post`` for a prediction route (:class:`OIPPredictRoute`; the decorators take no route class)."""

    def register(endpoint: _Endpoint) -> _Endpoint:
        router.add_api_route(
            path, endpoint, methods=["POST"], summary=summary, responses=responses, route_class_override=OIPPredictRoute
        )
        return endpoint

    return register


@_predict_post("/models/{task}/infer", "Inference", {400: {}, 404: {}, 413: {}, 503: {}})
@_predict_post("/models/{task}/versions/{version}/infer", "Inference (one version)", {404: {}})
async def infer(request: Request, task: str, version: str | None = None) -> Response:
    inference = inference_of(request)
    async with inference.admit([task], version=version) as admitted:  # 400/404 before the body is read
        req = await _read(request, inference.limits, admitted.entries[0])
        done = await inference.infer(admitted, req)
        ((entry, logits),) = done.results
        with tracing.span(inference.tracer, "encode"):
            return _respond(req, entry, logits, done.latency_ms)
