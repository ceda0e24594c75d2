"""The FastAPI app factory. Importing this module loads no model: the backbone loads in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope
from torch import nn

from adaptformer_server import __version__
from adaptformer_server.auth import Auth
from adaptformer_server.errors import CatchAllMiddleware, install_error_handlers
from adaptformer_server.limits import BodyLimitMiddleware
from adaptformer_server.metrics import Metrics, MetricsMiddleware
from adaptformer_server.routes import adapters, health, oip, predict, ui
from adaptformer_server.runtime import Runtime
from adaptformer_server.settings import Settings

__all__ = ["create_app"]

_MULTIPART_SLACK = 1024 * 1024  # form framing and the `task` field around an uploaded file

DESCRIPTION = """One frozen Vision Transformer, many hot-swapped AdaptFormer adapters.

`POST /predict?task=NAME` classifies images (or a clip) with one task's adapter (`task=a&task=b` or `task=*`:
several tasks in one pass); `/adapters` lists, uploads, replaces and deletes adapters. Errors are JSON:
`{"error": {"code", "message", "check"?}}`. `/v2/...` is the Open Inference Protocol (KServe v2) REST API;
`/ui` is a playground page.
"""


def create_app(settings: Settings | None = None, *, backbone: nn.Module | None = None) -> FastAPI:
    """Builds the app; the backbone, the store scan and the batcher start in its lifespan.

    Args:
        settings: Server settings (read from ADAPTFORMER_* environment variables when omitted).
        backbone: A prebuilt timm ViT to serve instead of the one the settings name (tests, embedding apps).
    """
    settings = settings or Settings()
    metrics = Metrics()
    runtime = Runtime(settings, metrics, backbone=backbone)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="AdaptFormer Serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    app.state.auth = Auth(settings)
    install_error_handlers(app)

    def body_limit(scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/adapters":
            return settings.max_upload_bytes + _MULTIPART_SLACK
        return settings.max_body_bytes

    # Added innermost first: metrics see every final status, including the catch-all's 500.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(predict.router)
    app.include_router(adapters.router)
    app.include_router(health.router)
    app.include_router(oip.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    return app
