"""POST /predict: images or a clip in, top-k labels of one task out."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request

from adaptformer_server.deps import PredictAuth, ReadyRuntime
from adaptformer_server.errors import InvalidInput, status_of
from adaptformer_server.inputs import IMAGE_TYPES, decode_inputs, read_predict_body
from adaptformer_server.schemas import Prediction, PredictResponse, error_responses
from adaptformer_server.store import TASK_PATTERN, valid_task_name

router = APIRouter(tags=["predict"])

_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "`image` fields (one answer each, in order); for a clip task, repeated `frame` fields or "
        "one animated GIF/WebP in `image`; or a raw image body",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _FILES, "frame": _FILES}}},
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(IMAGE_TYPES)},
        },
    }
}


def _top_k(logits: torch.Tensor, labels: list[str], k: int) -> list[Prediction]:
    scores, idx = torch.softmax(logits.float(), dim=-1).topk(k)
    return [Prediction(label=labels[i], score=float(s)) for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify images or a clip with one task's adapter",
    responses=error_responses(400, 401, 403, 404, 413, 415, 503),
    openapi_extra=_BODY,
)
async def predict(
    request: Request,
    _: PredictAuth,
    runtime: ReadyRuntime,
    task: Annotated[str, Query(description=f"task name ({TASK_PATTERN})", max_length=64)],
    top_k: Annotated[int, Query(ge=1, description="labels per input (clamped to the class count)")] = 5,
) -> PredictResponse:
    start = time.perf_counter()
    metrics = runtime.metrics
    label, status = "_unknown", "500"  # unknown names never become label values
    try:
        if not valid_task_name(task):
            raise InvalidInput(f"task {task!r} is not a valid task name ({TASK_PATTERN}, no '..')")
        runtime.entry(task)  # 404 before reading the body
        label = task
        body = await read_predict_body(request, runtime.settings)
        entry, adapter = await runtime.resolve(task)  # the version this request runs on, whatever happens next
        inputs = await asyncio.to_thread(decode_inputs, body, entry.spec, task, runtime.settings)
        assert runtime.batcher is not None
        logits = await runtime.batcher.submit(inputs, entry.key, adapter)
        labels = entry.labels
        k = min(top_k, len(labels))
        status = "200"
        return PredictResponse(
            task=task,
            version=entry.version,
            modality=entry.spec.modality,  # type: ignore[arg-type]
            predictions=[_top_k(out, labels, k) for out in logits],
            latency_ms=round((time.perf_counter() - start) * 1000, 3),
        )
    except Exception as e:
        status = str(status_of(e))
        raise
    finally:
        metrics.predictions.labels(label, status).inc()
        metrics.predict_latency.observe(time.perf_counter() - start)
