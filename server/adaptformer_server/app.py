"""The FastAPI app factory. Importing this module loads no model: the backbone loads in the lifespan."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from torch import nn

try:
    import orjson
except ImportError:  # the server extra installs it; without it, the standard library's encoder
    orjson = None  # type: ignore[assignment]

from adaptformer_server import __version__
from adaptformer_server.auth import Auth
from adaptformer_server.body_limit import BodyLimit
from adaptformer_server.errors import install_error_handlers
from adaptformer_server.hosts import HostOriginCheck
from adaptformer_server.jobs import JobManager
from adaptformer_server.metrics import Metrics
from adaptformer_server.middleware import REPLICA_HEADER, ServingMiddleware
from adaptformer_server.observability import cors_policy, echo_request_ids
from adaptformer_server.routes import adapters, health, jobs, oip, predict, repository, ui
from adaptformer_server.routes.docs import install_docs
from adaptformer_server.runtime import Runtime
from adaptformer_server.settings import MAKE_KEY, Settings

__all__ = ["REPLICA_HEADER", "create_app", "default_replica_id"]

log = logging.getLogger("adaptformer_server")


DESCRIPTION = """One frozen Vision Transformer, many hot-swapped AdaptFormer adapters.

`POST /predict?task=NAME` classifies images (or a clip) with one task's adapter (`task=a&task=b` or `task=*`:
several tasks in one pass); `/adapters` lists, uploads, replaces and deletes adapters. Errors are JSON:
`{"error": {"code", "message", "check"?}}`. `/v2/...` is the Open Inference Protocol (KServe v2) REST API;
`/ui` is a playground page.
"""


class FastJSONResponse(JSONResponse):
    """JSON encoded by orjson (several times faster than the standard library) where it is installed.

    The default response class: it renders what handlers return as plain data (dicts, lists). Routes with a
    response model are serialised by pydantic's own JSON encoder either way (FastAPI's fast path, kept while the
    default class is left as a default).
    """

    def render(self, content: Any) -> bytes:
        if orjson is None:
            return super().render(content)
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def default_replica_id() -> str:
    """``host:pid``: tells apart the processes behind one address (replicas behind a proxy)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_app(
    settings: Settings | None = None,
    *,
    backbone: nn.Module | None = None,
    make_runtime: Callable[[Settings, Metrics], Any] | None = None,
) -> FastAPI:
    """Builds the app; the backbone, the store scan and the batcher start in its lifespan.

    Args:
        settings: Server settings (read from ADAPTFORMER_* environment variables when omitted).
        backbone: A prebuilt timm ViT to serve instead of the one the settings name (tests, embedding apps).
        make_runtime: Makes the runtime instead of :class:`Runtime` (a front process's, whose model is in the engine
            process: :class:`~adaptformer_server.tier.front.FrontRuntime`); such an app runs no training jobs.
    """
    settings = settings or Settings()
    for problem in settings.check_keys():  # off loopback a weak key raises InsecureKeyError
        log.warning("%s: allowed on loopback only; make a real key with %s", problem, MAKE_KEY)
    metrics = Metrics()
    runtime = make_runtime(settings, metrics) if make_runtime else Runtime(settings, metrics, backbone=backbone)
    metrics.is_task = runtime.adapters.knows
    replica_id = settings.replica_id or default_replica_id()
    job_manager = JobManager(settings, runtime, backbone=backbone) if isinstance(runtime, Runtime) else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        if job_manager is not None:
            job_manager.start()
        try:
            yield
        finally:
            if job_manager is not None:
                await job_manager.stop()
            await runtime.stop()

    app = FastAPI(
        title="AdaptFormer Serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
        docs_url=None,  # served offline by routes/docs.py
        redoc_url=None,
        # FastAPI's own spans would start with any tracer provider the process sets: off unless tracing is on,
        # and then the request span is OpenTelemetry's ASGI middleware's (tracing.instrument_app)
        telemetry=None if settings.tracing else {"tracing": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime  # the life cycle; routes use the services below (deps.py)
    app.state.adapters = runtime.adapters
    app.state.inference = runtime.inference
    app.state.jobs = job_manager
    app.state.replica_id = replica_id
    app.state.auth = Auth(settings)
    install_error_handlers(app)

    # One middleware: request id, CORS, replica header, metrics (every final status, the catch-all's 500
    # included), catch-all, Host/Origin checks, body limits (middleware.py).
    app.add_middleware(
        ServingMiddleware,
        metrics=metrics,
        replica_id=replica_id,
        hosts=HostOriginCheck(settings),
        body_limit=BodyLimit.of(settings),
        cors=cors_policy(settings, expose_headers=[REPLICA_HEADER]),
        echo_request_id=echo_request_ids(),
    )
    if settings.tracing:  # the otel extra; off, nothing of its SDK or instrumentation is imported
        from adaptformer_server.tracing import instrument_app

        instrument_app(app)
    app.include_router(predict.router)
    app.include_router(adapters.router)
    app.include_router(health.router)
    app.include_router(oip.router)
    app.include_router(repository.router)
    app.include_router(ui.router)
    app.include_router(jobs.router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    install_docs(app)
    return app
