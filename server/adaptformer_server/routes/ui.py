"""The playground: a static page (HTML, CSS, a little JavaScript; no build step, no CDN) that calls the API."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from adaptformer_server.errors import NotFound

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
EXAMPLES_DIR = Path(str(resources.files("adaptformer") / "demo" / "examples"))

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
async def playground() -> FileResponse:
    # The page holds no secret and reads everything from the API with the key the user types in.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def _samples() -> list[dict]:
    """The demo tasks' sample inputs (adaptformer/demo/examples, listed in its manifest.json); [] when absent."""
    try:
        return json.loads(EXAMPLES_DIR.joinpath("manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []


@router.get("/ui/examples")
async def samples() -> JSONResponse:
    # Buttons for the tasks the page lists; files of tasks the server does not serve are simply never shown.
    return JSONResponse({"examples": _samples()}, headers={"Cache-Control": "no-cache"})


@router.get("/ui/examples/{name}")
async def sample(name: str) -> FileResponse:
    # Only names from the manifest: a request never picks a path of its own.
    if name not in {e.get("file") for e in _samples()}:
        raise NotFound(f"no sample named {name!r}: GET /ui/examples lists them")
    media = "image/gif" if name.endswith(".gif") else "image/png"
    return FileResponse(EXAMPLES_DIR / name, media_type=media)
