"""Training jobs: ``POST /tasks/{task}/train`` (examples in, a job out), ``/jobs`` to watch, list and cancel them."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.datastructures import UploadFile

from adaptformer.preprocess import spec_from_model
from adaptformer_server.deps import AdminAuth, ReadyRuntime
from adaptformer_server.errors import InvalidInput, NotReady, PayloadTooLarge, UnsupportedMediaType
from adaptformer_server.inputs import media_type
from adaptformer_server.jobs.examples import ExamplesSummary, check_examples, unpack_fields, unpack_zip
from adaptformer_server.jobs.knobs import TrainKnobs
from adaptformer_server.jobs.manager import JobManager
from adaptformer_server.jobs.plan import adapter_description, adapter_input, check_adapter, check_knobs
from adaptformer_server.limits import Limits
from adaptformer_server.repository.names import task_name_problem
from adaptformer_server.schemas import error_responses, form_body

router = APIRouter(tags=["training"])

_LOG_TAIL = 64 * 1024
_FORM = form_body(
    {
        "examples": {
            "type": "string",
            "format": "binary",
            "description": "a zip of <class>/<image>, <class>/<clip>/<frames> or <class>/<clip>.gif",
        },
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "label": {"type": "array", "items": {"type": "string"}, "description": "one per image"},
    }
)


def _manager(request: Request) -> JobManager:
    manager: JobManager | None = getattr(request.app.state, "jobs", None)
    if manager is None:
        raise NotReady("training jobs are not available on this server", retry_after=60)
    if manager.unavailable:
        raise NotReady(manager.unavailable, retry_after=60)
    return manager


async def _read_examples(request: Request, manager: JobManager, folder_examples: Path) -> ExamplesSummary:
    settings = manager.settings
    limits = Limits.of(settings)
    form = await limits.form(request, limits.example_parts)
    try:
        examples = form.get("examples")
        images = [v for k, v in form.multi_items() if k == "image"]
        labels = [v for k, v in form.multi_items() if k == "label"]
        if isinstance(examples, UploadFile):
            if images:
                raise InvalidInput("send either an `examples` zip or `image`+`label` fields, not both")
            await asyncio.to_thread(unpack_zip, examples.file, folder_examples, settings)
        elif images:
            if len(images) != len(labels):
                raise InvalidInput(
                    f"{len(images)} `image` fields but {len(labels)} `label` fields; send one label each"
                )
            if len(images) > settings.max_examples:
                raise PayloadTooLarge(f"{len(images)} images; the limit is {settings.max_examples:,}")
            pairs = []
            for image, label in zip(images, labels, strict=True):
                if not isinstance(image, UploadFile) or not isinstance(label, str):
                    raise InvalidInput("`image` fields are files (curl -F image=@a.png) and `label` fields text")
                pairs.append((label, await image.read()))
            await asyncio.to_thread(unpack_fields, pairs, folder_examples)
        else:
            raise InvalidInput(
                "no examples: send a zip as the `examples` file field (curl -F examples=@defects.zip), or "
                "repeated `image` file fields with a `label` field each"
            )
    finally:
        await form.close()
    return await asyncio.to_thread(check_examples, folder_examples, settings)


@router.post(
    "/tasks/{task}/train",
    status_code=202,
    summary="Train a new task (or a new version of one) from labelled examples; returns the queued job",
    responses=error_responses(400, 401, 403, 413, 415, 422, 429, 503),
    openapi_extra=_FORM,
)
async def train_task(
    task: str,
    request: Request,
    response: Response,
    _: AdminAuth,
    runtime: ReadyRuntime,
    knobs: Annotated[TrainKnobs, Query()],
) -> Any:
    manager = _manager(request)
    settings = runtime.settings
    backbone, engine = runtime.backbone, runtime.engine
    assert backbone is not None and engine is not None  # a ready runtime has both
    if (problem := task_name_problem(task)) is not None:
        raise InvalidInput(problem)
    config = check_knobs(knobs, settings, backbone.depth)
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType("send the examples as multipart/form-data (curl -F examples=@defects.zip ...)")
    job_id, folder = manager.reserve()  # 429 before the body is read when the queue is full
    try:
        summary = await _read_examples(request, manager, folder / "examples")
        if summary.modality == "clip" and len(summary.frames) > 1 and knobs.frames is None:
            raise InvalidInput(
                f"the clips have different frame counts ({', '.join(map(str, summary.frames[:6]))}); pass frames=N "
                "to resample every clip to N evenly spaced frames"
            )
        if summary.modality == "clip" and not backbone.supports_clips:
            raise InvalidInput("the examples are clips; this server's backbone cannot read clips")
        if summary.modality == "image" and knobs.frames not in (None, 1):
            raise InvalidInput(f"frames={knobs.frames} applies to clips; these examples are still images")
        frames = knobs.frames or (summary.frames[0] if summary.frames else 1)
        spec = adapter_input(spec_from_model(engine.vit), summary.modality, frames, config.tubelet)
        description = knobs.description or adapter_description(summary.labels, job_id, summary.total + summary.held_out)
        check_adapter(task, config, summary.labels, description, spec, backbone, backbone.name)
        job = manager.submit(job_id, folder, task, knobs, summary, description)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    finally:
        manager.release(job_id)
    response.headers["Location"] = f"/jobs/{job_id}"
    return job.view()


@router.get("/jobs", summary="Training jobs, newest first", responses=error_responses(401, 403))
async def list_jobs(request: Request, _: AdminAuth) -> dict:
    return {"jobs": _manager(request).list()}


@router.get(
    "/jobs/{job_id}",
    summary="A job: status, epoch, loss, validation accuracy, ETA",
    responses=error_responses(401, 403, 404),
)
async def get_job(job_id: str, request: Request, _: AdminAuth) -> dict:
    return _manager(request).get(job_id).view()


@router.get(
    "/jobs/{job_id}/events",
    summary="The job as Server-Sent Events: one `job` event per change, `end` when it is over",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 403, 404)},
)
async def job_events(job_id: str, request: Request, _: AdminAuth) -> StreamingResponse:
    manager = _manager(request)
    manager.get(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        async for view in manager.watch(job_id):
            if view is None:
                yield b": keep-alive\n\n"
                continue
            yield b"event: job\ndata: " + json.dumps(view).encode() + b"\n\n"
        yield b"event: end\ndata: {}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/jobs/{job_id}/log",
    summary="The end of the training worker's log",
    response_class=PlainTextResponse,
    responses=error_responses(401, 403, 404),
)
async def job_log(job_id: str, request: Request, _: AdminAuth) -> PlainTextResponse:
    job = _manager(request).get(job_id)

    def tail() -> str:
        try:
            with open(job.folder / "log.txt", "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(size - _LOG_TAIL, 0))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    return PlainTextResponse(await asyncio.to_thread(tail))


@router.delete(
    "/jobs/{job_id}", summary="Cancel a job; nothing is registered", responses=error_responses(401, 403, 404, 409)
)
async def cancel_job(job_id: str, request: Request, _: AdminAuth) -> dict:
    job = await _manager(request).cancel(job_id)
    return job.view()
