"""What the hostile-input tests send: damaged payloads, tampered adapter files, requests through httpx or as raw
bytes on a socket, and the checks each case ends with (the server still answers /healthz and a normal prediction).

The cases themselves are tables in test_hostile_requests.py and test_hostile_uploads.py; they run against the shared
server process (limits in conftest.SHARED_SETTINGS).
"""

from __future__ import annotations

import http.client
import io
import json
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from benchmarks.reliability import Kit, Server
from tests.support import png

MiB = 1024 * 1024


# -- payloads --------------------------------------------------------------------------------------------------
def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``w`` x ``h`` pixels, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bmp_claiming(w: int, h: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\0" * 64


def corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :]


SOLID = (120, 30, 200)  # one colour: a large image that compresses to a small body
PNG = png(0, (64, 64))


def split_file(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    (n,) = struct.unpack("<Q", data[:8])
    return dict(st_load(data)), json.loads(data[8 : 8 + n])["__metadata__"]


def edit(
    data: bytes,
    meta: dict[str, Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    drop_meta: bool = False,
) -> bytes:
    t, m = split_file(data)
    m.update(meta or {})
    if tensors is not None:
        tensors(t)
    return st_save(t, metadata=None if drop_meta else m)


def set_tensor(name: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = value

    return edit


def poison(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value

    return edit


def narrow_branch(t: dict[str, torch.Tensor]) -> None:
    """Block 0's branch made for a 64-wide backbone (this one is 128 wide)."""
    t["adapters.0.down.weight"] = torch.randn(8, 64)
    t["adapters.0.up.weight"] = torch.randn(64, 8)
    t["adapters.0.up.bias"] = torch.randn(64)


def spec(data: bytes, **changes: Any) -> dict[str, str]:
    spec = json.loads(split_file(data)[1]["input"])
    spec.update(changes)
    return {"input": json.dumps(spec)}


def torch_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(4, 128)}, buf)
    return buf.getvalue()


# -- requests --------------------------------------------------------------------------------------------------
@dataclass
class Req:
    """An HTTP request: through httpx, or as raw bytes on a socket when ``raw`` is set (exact paths)."""

    method: str = "POST"
    url: str = "/predict?task=t00"
    kw: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None


def predict(*fields: tuple[str, bytes], task: str = "t00", name: str = "x.png", ctype: str = "image/png") -> Req:
    return Req(url=f"/predict?task={task}", kw={"files": [(f, (name, d, ctype)) for f, d in fields]})


def raw_predict(body: bytes, ctype: str | None, task: str = "t00") -> Req:
    headers = {"Content-Type": ctype} if ctype else {}
    return Req(url=f"/predict?task={task}", kw={"content": body, "headers": headers})


def upload(data: bytes, task: str | None = None) -> Req:
    kw: dict[str, Any] = {"files": {"file": ("adapter.safetensors", data, "application/octet-stream")}}
    if task is not None:
        kw["data"] = {"task": task}
    return Req(url="/adapters", kw=kw)


def raw(method: str, target: str, headers: str = "", body: bytes = b"") -> Req:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n" if "Content-Length" not in headers else ""
    return Req(raw=(head + "\r\n").encode() + body)


def multipart_many(n: int, file_parts: bool) -> Req:
    boundary = "hostileboundary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\nx\r\n"
        if file_parts
        else f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    )
    body = (part * n + f"--{boundary}--\r\n").encode()
    return Req(url="/predict?task=t00", kw={"content": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}})  # fmt: skip


Build = Callable[[Kit], Req]
Case = tuple[str, Build, int, str | None]
"""One hostile case: its id, the request it builds, its documented status and error code (None: not an error)."""


def cases(table: list[Case]) -> pytest.MarkDecorator:
    """Parametrizes a test over ``table`` as ``(build, status, code)``, each case named by its id (ids unique)."""
    ids = [c[0] for c in table]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"hostile case ids used twice: {repeated}"
    return pytest.mark.parametrize(("build", "status", "code"), [c[1:] for c in table], ids=ids)


T00 = "t00"


def adapter(kit: Kit) -> bytes:
    return kit.tasks[T00]


def send(server: Server, req: Req) -> tuple[int, dict, dict[str, str]]:
    if req.raw is not None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(req.raw)
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            body = resp.read()
            return resp.status, json_body(body), {k.lower(): v for k, v in resp.getheaders()}
    r = httpx.request(req.method, f"{server.url}{req.url}", timeout=60, **req.kw)
    return r.status_code, json_body(r.content), dict(r.headers)


def json_body(body: bytes) -> dict:
    """The JSON body, or ``{"raw": text}`` for the few answers uvicorn gives before the app sees a request."""
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"raw": body.decode(errors="replace")}


def healthy(server: Server, images) -> None:
    assert server.alive(), server.log_tail()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/predict?task=t00", files=[("image", images[0])], timeout=30)
    assert r.status_code == 200, r.text


def stream_body(
    port: int, target: str, ctype: str, total: int, prefix: bytes = b"", chunk: int = MiB, headers: str = ""
) -> tuple[int, dict, int, float]:
    """Streams ``prefix`` and ``total`` bytes (chunked, no Content-Length) until the server answers; returns the
    status, the body, the bytes handed to the socket and the seconds taken."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
            f"{headers}\r\n"
        )
        sock.sendall(head.encode())
        sock.setblocking(False)
        block = b"\x89PNG" + bytes(chunk - 4)
        sent, pending = 0, f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n" if prefix else b""
        while time.monotonic() - start < 60:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break  # the answer came before the body ended
            if not writable:
                raise AssertionError("the server neither reads nor answers")
            if not pending:
                if sent >= total:
                    pending = b"0\r\n\r\n"
                else:
                    pending = f"{len(block):x}\r\n".encode() + block + b"\r\n"
                    sent += len(block)
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            pending = pending[n:]
        sock.setblocking(True)
        sock.settimeout(30)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read() or b"{}"), sent, time.monotonic() - start
    finally:
        sock.close()


def check_case(server: Server, req: Req, status: int, code: str | None, images) -> None:
    """Sends one case of a table: its status (and error code, with a message), then the server is still healthy."""
    got, body, _ = send(server, req)
    if code is None:
        assert got == status, body
    else:
        assert (got, body.get("error", {}).get("code")) == (status, code), body
        assert body["error"]["message"]
    healthy(server, images)
