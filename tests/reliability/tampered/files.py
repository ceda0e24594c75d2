"""What the tampered-adapter-file tests build: the shipped demo adapters with their header or tensors edited, the
table of hostile files, and an in-process server on the embedded backbone."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from fastapi import FastAPI
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from tests.support import png

DEMO = Path(__file__).resolve().parents[3] / "adapters" / "adaptformer" / "demo"
QUARANTINE = ".quarantine"


# -- files ---------------------------------------------------------------------------------------------------
def demo(name: str) -> bytes:
    return (DEMO / f"{name}.safetensors").read_bytes()


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (as JSON) and the tensor bytes of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_meta(data: bytes, **changes: str) -> bytes:
    """``data`` with metadata fields replaced (the tensors untouched)."""
    header, body = split(data)
    header["__metadata__"].update(changes)
    return join(header, body)


def with_json(data: bytes, key: str, edit: Callable[[Any], Any]) -> bytes:
    """``data`` with the JSON metadata field ``key`` passed through ``edit``."""
    header, _ = split(data)
    return with_meta(data, **{key: json.dumps(edit(json.loads(header["__metadata__"][key])))})


def with_tensors(data: bytes, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    header, _ = split(data)
    tensors = st_load(data)
    edit(tensors)
    return st_save(tensors, metadata=header["__metadata__"])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


IMAGE = {"files": [("image", ("a.png", png(), "image/png"))]}


# -- a server on the embedded backbone, in-process -----------------------------------------------------------
def make_app(store: Path, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {"store": store, "seed_demo": False, "max_wait_ms": 2, "store_poll_ms": 0, "threads": 1}
    values.update(overrides)
    return create_app(Settings(**values))


def seed(store: Path, **tasks: bytes) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    for name, data in tasks.items():
        (store / f"{name}.safetensors").write_bytes(data)
    return store


def quarantined(app: FastAPI) -> float:
    return app.state.runtime.metrics.quarantined._value.get()


async def tasks_of(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/adapters")
    assert r.status_code == 200, r.text
    return [a["task"] for a in r.json()["adapters"]]


# Each hostile file, named for what it tampers. Before the fixes, all but two were accepted (201) or answered 500;
# "surrogate-bytes-in-header" and "bool-bottleneck" were refused already (kept as guards).
HOSTILE: dict[str, Callable[[], bytes]] = {
    "linear-layers-string": lambda: with_meta(demo("fashion"), layers='"5"'),
    "linear-layers-number": lambda: with_meta(demo("fashion"), layers="5"),
    "lone-surrogate-label": lambda: with_json(demo("fashion"), "labels", lambda v: ["\ud800", *v[1:]]),
    "surrogate-bytes-in-header": lambda: _surrogate_bytes(),
    "huge-metrics": lambda: with_meta(demo("fashion"), metrics=json.dumps({"notes": "x" * 7_000_000})),
    "long-label": lambda: with_json(demo("fashion"), "labels", lambda v: ["y" * 100_000, *v[1:]]),
    "many-metadata-keys": lambda: with_meta(demo("fashion"), **{f"k{i}": "v" for i in range(5000)}),
    "nested-metrics": lambda: with_meta(demo("fashion"), metrics=nested(100_000)),
    "nested-input": lambda: with_meta(demo("fashion"), input=nested(100_000)),
    "nested-metrics-shallow": lambda: with_meta(demo("fashion"), metrics=json.dumps({"a": json.loads(nested(500))})),
    "bool-layers": lambda: _true_block(),
    "bool-config-layers": lambda: with_json(demo("digits"), "config", lambda c: {**c, "layers": [True, 1]}),
    "bool-bottleneck": lambda: with_json(demo("digits"), "config", lambda c: {**c, "bottleneck": True}),
    "nested-header": lambda: _nested_header(),
}


def _surrogate_bytes() -> bytes:
    """A label that is a UTF-8-encoded lone surrogate (ED A0 80) in the raw header: not UTF-8 text."""
    header, body = split(demo("fashion"))
    labels = json.loads(header["__metadata__"]["labels"])
    header["__metadata__"]["labels"] = json.dumps(["SURROGATE", *labels[1:]])
    raw = json.dumps(header).encode().replace(b"SURROGATE", b"\xed\xa0\x80")
    return join(raw, body)


def _true_block() -> bytes:
    """``layers: [true, 1, ...]`` with block 0's tensors renamed to match (``adapters.True.*``)."""
    header, body = split(with_json(demo("digits"), "layers", lambda v: [True, *v[1:]]))
    renamed = {k.replace("adapters.0.", "adapters.True.", 1): v for k, v in header.items()}
    return join(renamed, body)


def _nested_header() -> bytes:
    header, body = split(demo("fashion"))
    raw = json.dumps(header).encode()
    return join(raw[:-1] + b', "extra": ' + nested(100_000).encode() + b"}", body)
