"""The messages between a front and the engine: one small JSON header, then tensors as raw frames.

A front's DEALER socket sends ``[header, *tensors]``; the engine's ROUTER answers ``[header, *tensors]``. Tensors
travel as their bytes (ZeroMQ frames, sent without a copy where large) and are rebuilt on the other side with
``torch.frombuffer``: nothing is pickled per request. Entry lookups (rare: once per task and registry change)
carry the registry entry pickled in one frame.

Requests (``op``): ``infer`` (``rid``: the request id, ``jobs``: per job the task key ``task@version`` and the
shape of each input; one frame per input), ``entry`` (``task``: a name or ``task@version``), ``image_tasks``.
Answers carry the request's ``id`` and either the result or ``error``: the domain error's class name, message,
check and headers, re-raised in the front as the same :class:`~adaptformer_server.errors.ApiError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import orjson
import torch

from adaptformer_server import errors

__all__ = ["decode_error", "dumps", "encode_error", "loads", "tensor_frame", "tensor_from"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "uint8": torch.uint8}

# A received frame is read-only memory; the engine only reads it (the batcher stacks a copy), so the tensor built on
# it without a copy is safe, and torch's warning about it would fire on every request.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def dumps(header: dict[str, Any]) -> bytes:
    return orjson.dumps(header)


def loads(frame: bytes | memoryview) -> dict[str, Any]:
    return orjson.loads(frame)


def tensor_frame(t: torch.Tensor) -> memoryview:
    """The bytes of a host tensor, without a copy when it is contiguous."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: its bytes as int16
        t = t.view(torch.int16)
    return t.numpy().data.cast("B")


def tensor_from(buffer: Any, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor of a frame (sharing its memory: keep the tensor, and it keeps the frame)."""
    t = torch.frombuffer(buffer, dtype=_DTYPES[dtype]) if len(buffer) else torch.empty(0, dtype=_DTYPES[dtype])
    return t.view(*shape)


def dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(f"cannot send a {name} tensor to the engine")
    return name


def encode_error(e: BaseException) -> dict[str, Any]:
    api = errors.as_api_error(e)  # the answer to a domain error (the batcher's, the library's) crosses as itself
    if api is not None:
        return {"type": type(api).__name__, "message": api.message, "check": api.check, "headers": api.headers}
    return {"type": "ApiError", "message": f"the engine process failed on this request: {e}", "check": None}


def decode_error(d: dict[str, Any]) -> errors.ApiError:
    cls = getattr(errors, str(d.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.ApiError)):
        cls = errors.ApiError
    e = cls.__new__(cls)
    errors.ApiError.__init__(e, str(d.get("message", "")), check=d.get("check"), headers=d.get("headers") or {})
    return e
