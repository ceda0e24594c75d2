"""/docs (Swagger UI) and /redoc without a CDN: their scripts and styles come from the fastapi-offline package,
so the API reference works on the offline machines the server runs on."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_DIR", "install_docs"]

ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
_ASSETS = "/docs/static"

router = APIRouter(include_in_schema=False)


def _page(render: Callable[..., HTMLResponse], request: Request, **assets: str) -> HTMLResponse:
    """A reference page on this app's schema; ``assets`` name the files under ``_ASSETS`` it loads."""
    urls = {option: f"{_ASSETS}/{file}" for option, file in assets.items()}
    return render(openapi_url=request.app.openapi_url, title=f"{request.app.title} · API", **urls)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _page(get_swagger_ui_html, request, swagger_js_url="swagger-ui-bundle.js",
                 swagger_css_url="swagger-ui.css", swagger_favicon_url="favicon.png")  # fmt: skip


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    offline = partial(get_redoc_html, with_google_fonts=False)
    return _page(offline, request, redoc_js_url="redoc.standalone.js", redoc_favicon_url="favicon.png")


def install_docs(app: FastAPI) -> None:
    """Adds /docs, /redoc and their assets; the app must be created with ``docs_url=None, redoc_url=None``."""
    app.include_router(router)
    app.mount(_ASSETS, StaticFiles(directory=ASSETS_DIR), name="docs-static")
