"""POST /predict: images or a clip in, top-k labels of one task (or of several, from one forward pass) out."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request

from adaptformer_server import tracing
from adaptformer_server.deps import PredictRoute, inference_of
from adaptformer_server.inputs import IMAGE_TYPES, read_predict_body
from adaptformer_server.repository.names import TASK_PATTERN
from adaptformer_server.repository.record import AdapterEntry
from adaptformer_server.schemas import MultiPredictResponse, Prediction, PredictResponse, error_responses, form_body
from adaptformer_server.services import ALL_IMAGE_TASKS

router = APIRouter(tags=["predict"], route_class=PredictRoute)  # key and readiness checked by the route

_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_BODY = form_body(
    {"image": _FILES, "frame": _FILES},
    description="`image` fields (one answer each, in order); for a clip task, repeated `frame` fields or one "
    "animated GIF/WebP in `image`; or a raw image body",
    other={t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(IMAGE_TYPES)},
)


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> list[Prediction]:
    scores, idx = torch.softmax(logits.float(), dim=-1).topk(k)
    return [Prediction(label=labels[i], score=float(s)) for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]


def answer(entry: AdapterEntry, logits: list[torch.Tensor], k: int, latency_ms: float) -> PredictResponse:
    labels = entry.labels
    k = min(k, len(labels))
    return PredictResponse(
        task=entry.task,
        version=entry.version,
        modality=entry.spec.modality,  # type: ignore[arg-type]
        predictions=[top_k(out, labels, k) for out in logits],
        latency_ms=latency_ms,
    )


@router.post(
    "/predict",
    response_model=PredictResponse | MultiPredictResponse,
    summary="Classify images or a clip with one task's adapter, or with several tasks in one pass",
    responses=error_responses(400, 401, 403, 404, 413, 415, 503),
    openapi_extra=_BODY,
)
async def predict(
    request: Request,
    task: Annotated[
        list[str],
        Query(
            description=f"task name ({TASK_PATTERN}); repeat it for several tasks (answered as `results`), "
            "or `*` for every image task",
            max_length=64,
        ),
    ],
    top_k: Annotated[int, Query(ge=1, description="labels per input (clamped to the class count)")] = 5,
) -> PredictResponse | MultiPredictResponse:
    inference = inference_of(request)
    async with inference.admit(task) as admitted:  # 400/404 before the body is read
        body = await read_predict_body(request, inference.limits)
        done = await inference.infer(admitted, body)
        with tracing.span(inference.tracer, "encode"):
            results = [answer(entry, out, top_k, done.latency_ms) for entry, out in done.results]
            multi = len(task) > 1 or task[0] == ALL_IMAGE_TASKS
            return MultiPredictResponse(results=results, latency_ms=done.latency_ms) if multi else results[0]
