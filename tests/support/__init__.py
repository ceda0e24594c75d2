"""Helpers shared by the tests and the benchmarks, imported one way everywhere: ``from tests.support import png``.

(The repository root is on pytest's ``pythonpath``; a benchmark runs from it with ``python -m benchmarks.x``.)

- :mod:`.wait`: bounded waits. Tests synchronise on what they wait for (an event, a metric, an answer), never on
  a fixed sleep: a condition is polled until it holds, and only a generous bound turns a wait into a failure that
  names what was awaited.
- :mod:`.app`: an app's lifespan run in-process with an httpx client on it.
- :mod:`.process`: server processes on loopback (a free port, spawn, wait for /readyz, clean stop).
- :mod:`.media`: image bytes for requests.
- :mod:`.adapters`: backbones and adapter files with random weights, for the server and the benchmarks.
- :mod:`.remote`: a loopback HTTP(S) server that answers what a test tells it (adapter sources).
- :mod:`.models`: tiny timm ViTs, random adapters on them, and reference formulas for the library's unit tests.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any


def _exported(module: str) -> list[str]:
    """``module``'s ``__all__``, read from its source: parsing it imports nothing."""
    tree = ast.parse((Path(__file__).with_name(f"{module}.py")).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise LookupError(f"tests/support/{module}.py has no __all__")


# Each name is imported from its module on first use, so that a test needs only what it uses (the client's tests
# run without the server's packages; a benchmark does not import the app for a free port).
_HOME = {module: _exported(module) for module in ("adapters", "app", "media", "process", "wait")} | {
    "models": [
        "IMG",
        "PETS_CONFIG",
        "PETS_LABELS",
        "PETS_METRICS",
        "adapted",
        "clips",
        "images",
        "make_vit",
        "max_diff",
        "randomize_adapters",
        "read_file",
        "reference_block",
        "rewrite",
    ],
    "remote": ["Answer", "Remote"],
}
_MODULE = {name: module for module, names in _HOME.items() for name in names}
__all__ = [
    "CLIP_FRAMES",
    "DEFAULT_TIMEOUT",
    "IMG",
    "PETS_CONFIG",
    "PETS_LABELS",
    "PETS_METRICS",
    "SERVE",
    "WORKERS_ENV",
    "Answer",
    "Remote",
    "ServerProcess",
    "adapted",
    "adapter_bytes",
    "async_wait_until",
    "children",
    "clean_env",
    "clips",
    "cpu_seconds",
    "embedded_backbone",
    "encode",
    "free_port",
    "gif",
    "held_request",
    "hold_forward_pass",
    "image_files",
    "images",
    "live_server",
    "make_task",
    "make_vit",
    "max_diff",
    "png",
    "randomize_adapters",
    "read_file",
    "reference_block",
    "rewrite",
    "run_python",
    "serving",
    "stop",
    "tensor_of",
    "tiny_vit",
    "upload_files",
    "wait_ready",
    "wait_until",
]
assert sorted(_MODULE) == sorted(__all__)

if TYPE_CHECKING:
    from .adapters import CLIP_FRAMES, adapter_bytes, embedded_backbone, make_task, tiny_vit, upload_files
    from .app import held_request, hold_forward_pass, serving
    from .media import encode, gif, image_files, png, tensor_of
    from .models import (
        IMG,
        PETS_CONFIG,
        PETS_LABELS,
        PETS_METRICS,
        adapted,
        clips,
        images,
        make_vit,
        max_diff,
        randomize_adapters,
        read_file,
        reference_block,
        rewrite,
    )
    from .process import (
        SERVE,
        WORKERS_ENV,
        ServerProcess,
        children,
        clean_env,
        cpu_seconds,
        free_port,
        live_server,
        run_python,
        stop,
        wait_ready,
    )
    from .remote import Answer, Remote
    from .wait import DEFAULT_TIMEOUT, async_wait_until, wait_until


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE[name]}", __name__), name)
    globals()[name] = value
    return value
