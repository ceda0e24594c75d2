"""POST /predict: images or a clip in, top-k labels of one task (or of several, from one forward pass) out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request

from adaptformer.preprocess import InputSpec
from adaptformer.task import TaskAdapter
from adaptformer_server.deps import PredictAuth, ReadyRuntime
from adaptformer_server.errors import (
    IncompatibleAdapter,
    InvalidAdapter,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    counted,
)
from adaptformer_server.inputs import (
    IMAGE_TYPES,
    Decoder,
    PredictBody,
    decode_device,
    decode_inputs,
    read_predict_body,
)
from adaptformer_server.registry import AdapterEntry
from adaptformer_server.runtime import Runtime, split_pin
from adaptformer_server.schemas import MultiPredictResponse, Prediction, PredictResponse, error_responses
from adaptformer_server.settings import Settings
from adaptformer_server.store import TASK_PATTERN, valid_task_name, valid_version

router = APIRouter(tags=["predict"])
log = logging.getLogger("adaptformer_server")

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


ALL_IMAGE_TASKS = "*"
Job = tuple[AdapterEntry, TaskAdapter, list[torch.Tensor]]  # a task's version, its adapter, its inputs


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> list[Prediction]:
    scores, idx = torch.softmax(logits.float(), dim=-1).topk(k)
    return [Prediction(label=labels[i], score=float(s)) for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]


def check_task_name(task: str) -> None:
    """400 for a name that can never be a task (before any lookup); ``task@version`` pins a kept version."""
    name, version = split_pin(task)
    if not valid_task_name(name) or (version is not None and not valid_version(version)):
        raise InvalidInput(
            f"task {task!r} is not a valid task name ({TASK_PATTERN}, no '..'), optionally followed by "
            "@<version> (12 hex digits, as GET /adapters/{task}/versions lists them)"
        )


def expand_tasks(runtime: Runtime, names: list[str]) -> list[str]:
    """The tasks a request names, in order, without repeats; ``*`` stands for every image task. 400/404 early."""
    tasks: list[str] = []
    for name in names:
        if name == ALL_IMAGE_TASKS:
            every = [e.task for e in runtime.registry if e.spec.modality == "image"]
            if not every:
                raise NotFound("task=* asks for every image task, but this server has none; GET /adapters lists them")
            tasks.extend(every)
        else:
            check_task_name(name)
            runtime.entry(name)  # 404 before reading the body
            tasks.append(name)
    return list(dict.fromkeys(tasks))


async def resolve_tasks(
    runtime: Runtime, tasks: list[str], optional: set[str]
) -> list[tuple[AdapterEntry, TaskAdapter]]:
    """Admission: the version and adapter of each task, which the request keeps until it is answered.

    A task in ``optional`` (one that ``*`` stood for) that is deleted meanwhile, or whose stored file cannot be
    served, is left out rather than failing the request for the other tasks; a task named outright is not.
    """
    resolved = []
    for name in tasks:
        try:
            resolved.append(await runtime.resolve(name))
        except (NotFound, InvalidAdapter, IncompatibleAdapter) as e:
            if name not in optional:
                raise
            log.info("task=* leaves out %s: %s", name, e.message)
    if not resolved:
        raise NotFound("task=* asks for every image task, but none can be served now; GET /adapters lists them")
    return resolved


def decode_for(
    body: PredictBody, entries: list[AdapterEntry], settings: Settings, decoder: Decoder | None = None
) -> list[list[torch.Tensor]]:
    """Decodes the body's images once, preprocesses them once per distinct input spec and gives each entry its
    inputs; one pixel budget for the whole request (blocking: see :meth:`Decoder.run`)."""
    decoder = Decoder(settings) if decoder is None else decoder
    done: list[tuple[InputSpec, list[torch.Tensor]]] = []
    out = []
    for entry in entries:
        spec = entry.spec
        inputs = next((x for s, x in done if s == spec), None)
        if inputs is None:
            inputs = decode_inputs(body, spec, entry.task, settings, decoder=decoder)
            done.append((spec, inputs))
        out.append(inputs)
    return out


def _check_queue_size(runtime: Runtime, jobs: list[Job]) -> None:
    total = sum(len(inputs) for _, _, inputs in jobs)
    if len(jobs) > 1 and total > runtime.settings.queue_size:  # one task keeps the contract's 503
        raise PayloadTooLarge(
            f"this request needs {total} samples ({len(jobs)} tasks); the queue holds at most "
            f"{runtime.settings.queue_size}: ask for fewer tasks or send fewer images"
        )


async def run_tasks(
    runtime: Runtime, jobs: list[tuple[AdapterEntry, TaskAdapter, list[torch.Tensor]]]
) -> list[list[torch.Tensor]]:
    """Runs the inputs of every job through the batcher at once (shared forward passes); logits per job."""
    _check_queue_size(runtime, jobs)
    assert runtime.batcher is not None
    return await runtime.batcher.submit_many([(inputs, entry.key, adapter) for entry, adapter, inputs in jobs])


async def run_leaving_out(
    runtime: Runtime, jobs: list[Job], optional: set[str]
) -> tuple[list[Job], list[list[torch.Tensor]]]:
    """:func:`run_tasks`, but a job of a task in ``optional`` whose adapter fails (non-finite scores) is left out
    instead of failing the others; returns the jobs kept and their logits.

    Each task's samples are queued on their own, in the same turn of the event loop, so they still share forward
    passes. Any other error (overload, shutdown) cancels the rest and fails the request.
    """
    if not optional.intersection(entry.task for entry, _, _ in jobs):
        return jobs, await run_tasks(runtime, jobs)
    _check_queue_size(runtime, jobs)
    assert runtime.batcher is not None
    batcher = runtime.batcher
    runs = [asyncio.ensure_future(batcher.submit_many([(x, entry.key, adapter)])) for entry, adapter, x in jobs]
    try:
        pending = set(runs)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for run, job in zip(runs, jobs, strict=True):
                error = run.exception() if run in done else None
                if error is not None and not (isinstance(error, InvalidAdapter) and job[0].task in optional):
                    raise error
    finally:
        for run in runs:
            run.cancel()  # nothing when done; otherwise its samples leave the queue
    kept = [(job, run.result()[0]) for job, run in zip(jobs, runs, strict=True) if run.exception() is None]
    for job, run in zip(jobs, runs, strict=True):
        if run.exception() is not None:
            log.info("task=* leaves out %s: %s", job[0].task, run.exception())
    if not kept:  # every task failed: the first one's error
        error = runs[0].exception()
        assert error is not None
        raise error
    return [job for job, _ in kept], [logits for _, logits in kept]


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
    _: PredictAuth,
    runtime: ReadyRuntime,
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
    start = time.perf_counter()
    metrics = runtime.metrics
    labels_: list[str] = ["_unknown"]  # unknown names never become label values

    def record(status: str) -> None:
        for label in labels_:
            metrics.predictions.labels(label, status).inc()
        metrics.predict_latency.observe(time.perf_counter() - start)

    with counted(record, 200):
        if not task:
            raise InvalidInput("the query needs a `task` (repeat it for several tasks, or task=* for every image task)")
        multi = len(task) > 1 or task[0] == ALL_IMAGE_TASKS
        tasks = expand_tasks(runtime, task)
        labels_ = list(dict.fromkeys(split_pin(t)[0] for t in tasks))  # pinned versions count as their task
        body = await read_predict_body(request, runtime.settings)
        optional = set(tasks) - set(task)  # the tasks only `*` stands for
        resolved = await resolve_tasks(runtime, tasks, optional)
        settings = runtime.settings
        decoder = Decoder(
            settings, device=decode_device(settings, runtime.backbone.device if runtime.backbone else None)
        )
        entries = [entry for entry, _ in resolved]
        inputs = await decoder.run(decode_for, body, entries, settings, decoder, pixels=decoder.declared_pixels(body))
        jobs = [(entry, adapter, x) for (entry, adapter), x in zip(resolved, inputs, strict=True)]
        jobs, logits = await run_leaving_out(runtime, jobs, optional)
        entries = [entry for entry, _, _ in jobs]
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        results = [answer(entry, out, top_k, latency_ms) for entry, out in zip(entries, logits, strict=True)]
        return MultiPredictResponse(results=results, latency_ms=latency_ms) if multi else results[0]
