"""/adapters: list, inspect, upload (replace), register by reference, version, roll back, split traffic between
versions and delete adapters."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from adaptformer_server.deps import Adapters, AdminAuth, PredictAuth
from adaptformer_server.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, counted
from adaptformer_server.inputs import media_type
from adaptformer_server.limits import Limits
from adaptformer_server.repository.registry import MAX_PAGE, decode_cursor, encode_cursor
from adaptformer_server.schemas import (
    AdapterInfo,
    AdapterList,
    DeleteResponse,
    PromoteRequest,
    PromoteResponse,
    RegisterRequest,
    RollbackRequest,
    RollbackResponse,
    SplitInfo,
    SplitRequest,
    UploadResponse,
    VersionList,
    error_responses,
    form_body,
)
from adaptformer_server.services import AdapterManager, Replacement
from adaptformer_server.sources import fetch, scheme_of

router = APIRouter(prefix="/adapters", tags=["adapters"])

_UPLOAD = form_body(
    {
        "file": {"type": "string", "format": "binary", "description": "the .safetensors adapter"},
        "task": {"type": "string", "description": "task name (default: the one in the file)"},
    },
    required=["file"],
    other={"application/json": {"schema": RegisterRequest.model_json_schema()}},
)


@router.get(
    "",
    response_model=AdapterList,
    response_model_exclude_unset=True,  # next_cursor only in paged answers (every field of an AdapterInfo is set)
    summary="Tasks sorted by name: all of them, or a page (limit, cursor), filtered by name prefix or modality",
    responses=error_responses(400, 401, 403, 503),
)
async def list_adapters(
    _: PredictAuth,
    adapters: Adapters,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_PAGE, description="at most this many tasks (default: all of them)")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="the previous page's next_cursor")] = None,
    prefix: Annotated[str, Query(max_length=64, description="only tasks whose name starts with it")] = "",
    modality: Annotated[Literal["image", "clip"] | None, Query(description="only tasks of this modality")] = None,
) -> dict:
    try:
        after = decode_cursor(cursor)
    except ValueError as e:
        raise InvalidInput(f"bad query parameter: {e}") from None
    page, last = adapters.page(after, limit, prefix, modality)
    body: dict = {"adapters": [adapters.info(e) for e in page]}
    if limit is not None or cursor is not None:  # else every task, in the answer of before paging
        body["next_cursor"] = encode_cursor(last)
    return body


@router.get("/{task}", response_model=AdapterInfo, summary="One task", responses=error_responses(401, 403, 404, 503))
async def get_adapter(task: str, _: PredictAuth, adapters: Adapters) -> dict:
    return adapters.info(adapters.entry(task))


@router.post(
    "",
    status_code=201,
    response_model=UploadResponse,
    summary="Upload or replace a task adapter (a file, or a source URL to fetch it from); servable on return",
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 502, 503, 504),
    openapi_extra=_UPLOAD,
)
async def upload_adapter(request: Request, _: AdminAuth, adapters: Adapters) -> dict:
    settings = adapters.settings
    if media_type(request) == "application/json":
        return await _register(request, adapters)
    with counted(lambda status: adapters.metrics.uploads.labels(status).inc(), 201):
        if media_type(request) != "multipart/form-data":
            raise UnsupportedMediaType(
                "upload the adapter as multipart/form-data with a `file` field "
                "(curl -F file=@cars.safetensors http://HOST/adapters), or send JSON "
                '{"task": ..., "source": "https://..."} to have the server fetch it'
            )
        form = await Limits.of(settings).form(request)
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise ValidationFailed(
                    "the upload needs a file field named `file` holding the .safetensors adapter "
                    "(curl -F file=@cars.safetensors)"
                )
            data = await file.read()
            if len(data) > settings.max_upload_bytes:
                raise PayloadTooLarge(
                    f"the adapter file has {len(data):,} bytes; the limit is {settings.max_upload_bytes:,} "
                    "(ADAPTFORMER_MAX_UPLOAD_BYTES)"
                )
            name = form.get("task")
            if name is not None and not isinstance(name, str):
                raise ValidationFailed("the `task` field must be a plain text field")
        finally:
            await form.close()
        result = await adapters.upload(data, name.strip() if name and name.strip() else None)
    return _uploaded(adapters, result)


def _uploaded(adapters: AdapterManager, result: Replacement) -> dict:
    return {
        "adapter": adapters.info(result.entry),
        "replaced": result.previous is not None,
        "previous_version": result.previous.version if result.previous else None,
    }


async def _register(request: Request, adapters: AdapterManager) -> dict:
    """POST /adapters with JSON: fetch the file from its source, then exactly the checks of an upload."""
    scheme = "other"
    with counted(lambda status: adapters.metrics.source_fetches.labels(scheme, status).inc(), 201):
        try:
            body = RegisterRequest.model_validate(json.loads(await request.body()))
        except (ValueError, RecursionError, ValidationError) as e:
            message = e.errors()[0]["msg"] if isinstance(e, ValidationError) else "the body is not a JSON object"
            raise ValidationFailed(
                f'register an adapter by reference with JSON {{"task": "flowers", "source": "https://...", '
                f'"sha256": "..."}}: {message}'
            ) from None
        scheme = scheme_of(body.source)
        data = await fetch(body.source, body.sha256, adapters.settings)
        task = body.task.strip() if body.task and body.task.strip() else None
        result = await adapters.upload(data, task)
    return _uploaded(adapters, result)


@router.get(
    "/{task}/versions",
    response_model=VersionList,
    summary="The versions kept of a task, newest first",
    responses=error_responses(401, 403, 404, 503),
)
async def list_versions(task: str, _: PredictAuth, adapters: Adapters) -> dict:
    return await adapters.versions(task)


@router.get(
    "/{task}/file",
    summary="The exact bytes of the current version of a task (or of a kept one)",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the .safetensors file"},
        **error_responses(401, 403, 404, 503),
    },
)
async def download_adapter(
    task: str,
    _: PredictAuth,
    adapters: Adapters,
    version: Annotated[str | None, Query(description="a kept version (default: the current one)")] = None,
) -> Response:
    data, served = await adapters.file(task, version)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{task}@{served}.safetensors"',
            "ETag": f'"{served}"',
            "X-Adapter-Version": served,
        },
    )


@router.post(
    "/{task}/rollback",
    response_model=RollbackResponse,
    summary="Make a kept version current again (default: the one before the current)",
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def rollback_adapter(task: str, _: AdminAuth, adapters: Adapters, body: RollbackRequest | None = None) -> dict:
    with counted(lambda status: adapters.metrics.rollbacks.labels(status).inc(), 200):
        result = await adapters.rollback(task, body.version if body else None)
    return _made_current(adapters, result)


@router.get(
    "/{task}/split",
    response_model=SplitInfo,
    summary="How a task's unpinned requests are shared between its versions",
    responses=error_responses(401, 403, 404, 503),
)
async def get_split(task: str, _: PredictAuth, adapters: Adapters) -> dict:
    return adapters.split_info(task)


@router.put(
    "/{task}/split",
    response_model=SplitInfo,
    summary="Share a task's unpinned requests between kept versions by weight (a canary roll-out)",
    responses=error_responses(400, 401, 403, 404, 422, 503),
)
async def put_split(task: str, body: SplitRequest, _: AdminAuth, adapters: Adapters) -> dict:
    return await adapters.set_split(task, body.versions)


@router.post(
    "/{task}/split/promote",
    response_model=PromoteResponse,
    summary="Make a version of the split current and clear the split",
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def promote_split(task: str, body: PromoteRequest, _: AdminAuth, adapters: Adapters) -> dict:
    return _made_current(adapters, await adapters.promote(task, body.version))


def _made_current(adapters: AdapterManager, result: Replacement) -> dict:
    """What a rollback or a promote answers: the version made current and the one it replaced."""
    assert result.previous is not None
    return {"adapter": adapters.info(result.entry), "previous_version": result.previous.version}


@router.delete(
    "/{task}/split",
    response_model=SplitInfo,
    summary="Abort a split: the current version serves every request again",
    responses=error_responses(401, 403, 404, 409, 503),
)
async def abort_split(task: str, _: AdminAuth, adapters: Adapters) -> dict:
    return await adapters.abort_split(task)


@router.delete(
    "/{task}",
    response_model=DeleteResponse,
    summary="Delete a task; requests in flight finish with it",
    responses=error_responses(401, 403, 404, 503),
)
async def delete_adapter(task: str, _: AdminAuth, adapters: Adapters) -> dict:
    entry = await adapters.delete(task)
    return {"task": task, "deleted": True, "version": entry.version}
