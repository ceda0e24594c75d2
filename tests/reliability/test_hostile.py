"""Item 5: hostile input, table-driven. Each case gets its documented 4xx (docs/API.md) and the server stays healthy.

Every case runs against the shared server process (limits in conftest.SHARED_SETTINGS); after each one the test
checks /healthz and a normal prediction, and at the end that nothing was written outside the store and the log
holds no internal error.
"""

from __future__ import annotations

import http.client
import io
import json
import pickle
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
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from benchmarks.reliability import Kit, Server, rss_mb
from tests.support import gif, png

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


# -- payloads --------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``w`` x ``h`` pixels, with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def _bmp_claiming(w: int, h: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\0" * 64


def _corrupt(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :]


SOLID = (120, 30, 200)  # one colour: a large image that compresses to a small body
PNG = png(0, (64, 64))


def _split(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    (n,) = struct.unpack("<Q", data[:8])
    return dict(st_load(data)), json.loads(data[8 : 8 + n])["__metadata__"]


def _edit(
    data: bytes,
    meta: dict[str, Any] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    drop_meta: bool = False,
) -> bytes:
    t, m = _split(data)
    m.update(meta or {})
    if tensors is not None:
        tensors(t)
    return st_save(t, metadata=None if drop_meta else m)


def _set(name: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = value

    return edit


def _poison(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = t[name].clone()
        t[name].view(-1)[0] = value

    return edit


def _narrow_branch(t: dict[str, torch.Tensor]) -> None:
    """Block 0's branch made for a 64-wide backbone (this one is 128 wide)."""
    t["adapters.0.down.weight"] = torch.randn(8, 64)
    t["adapters.0.up.weight"] = torch.randn(64, 8)
    t["adapters.0.up.bias"] = torch.randn(64)


def _spec(data: bytes, **changes: Any) -> dict[str, str]:
    spec = json.loads(_split(data)[1]["input"])
    spec.update(changes)
    return {"input": json.dumps(spec)}


def _torch_checkpoint() -> bytes:
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


def _multipart_many(n: int, file_parts: bool) -> Req:
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
T00 = "t00"


def _adapter(kit: Kit) -> bytes:
    return kit.tasks[T00]


# id, request, status, error code (None: not an error)
CASES: list[tuple[str, Build, int, str | None]] = [
    # images
    ("truncated-png", lambda k: predict(("image", PNG[: len(PNG) // 2])), 400, "invalid_input"),
    ("corrupt-png", lambda k: predict(("image", _corrupt(PNG))), 400, "invalid_input"),
    ("zero-byte-image-part", lambda k: predict(("image", b"")), 400, "invalid_input"),
    ("zero-byte-raw-body", lambda k: raw_predict(b"", "image/png"), 400, "invalid_input"),
    ("text-named-png", lambda k: predict(("image", b"hello, I am not an image\n" * 10)), 400, "invalid_input"),
    ("elf-named-png", lambda k: predict(("image", b"\x7fELF" + bytes(200))), 400, "invalid_input"),
    (
        "wrong-content-type-json",
        lambda k: raw_predict(b'{"image": "x"}', "application/json"),
        415,
        "unsupported_media_type",
    ),
    ("wrong-content-type-text", lambda k: raw_predict(PNG, "text/plain"), 415, "unsupported_media_type"),
    ("no-content-type", lambda k: raw_predict(PNG, None), 415, "unsupported_media_type"),
    (
        "png-claims-100000x100000",
        lambda k: predict(("image", _png_claiming(100_000, 100_000))),
        413,
        "payload_too_large",
    ),
    (
        "raw-png-claims-100000x100000",
        lambda k: raw_predict(_png_claiming(100_000, 100_000), "image/png"),
        413,
        "payload_too_large",
    ),
    (
        "bmp-claims-50000x50000",
        lambda k: predict(("image", _bmp_claiming(50_000, 50_000))),
        413,
        "payload_too_large",
    ),
    (
        "png-over-pixel-limit",
        lambda k: predict(("image", png(size=(2000, 1500), color=SOLID))),
        413,
        "payload_too_large",
    ),
    (
        "request-over-pixel-budget",
        lambda k: predict(*[("image", png(size=(1200, 1200), color=SOLID))] * 3),
        413,
        "payload_too_large",
    ),
    ("too-many-images", lambda k: predict(*[("image", PNG)] * 65), 413, "payload_too_large"),
    ("5000-file-parts", lambda k: _multipart_many(5000, True), 413, "payload_too_large"),
    ("5000-text-fields", lambda k: _multipart_many(5000, False), 413, "payload_too_large"),
    (
        "100KB-text-field",
        lambda k: Req(kw={"files": [("image", ("a.png", PNG, "image/png"))], "data": {"note": "x" * 100_000}}),
        413,
        "payload_too_large",
    ),
    ("multipart-without-boundary", lambda k: raw_predict(b"--x\r\n\r\n", "multipart/form-data"), 400, "invalid_input"),
    (
        "multipart-garbage",
        lambda k: raw_predict(b"\x00\xff" * 500, "multipart/form-data; boundary=zz"),
        400,
        "invalid_input",
    ),
    (
        "multipart-no-image-field",
        lambda k: Req(kw={"data": {"other": "x"}, "files": {"x": ("a.png", PNG, "image/png")}}),
        400,
        "invalid_input",
    ),
    (
        "image-as-text-field",
        lambda k: Req(kw={"data": {"image": "iVBORw0KGgo="}, "files": {"x": ("a", b"", "x/y")}}),
        400,
        "invalid_input",
    ),
    # clips (clip4: 4 frames)
    (
        "clip-mismatched-frame-sizes",
        lambda k: predict(*[("frame", png(0, s)) for s in ((8, 8), (64, 64), (40, 30), (28, 28))], task="clip4"),
        200,
        None,
    ),
    (
        "clip-65-frame-fields",
        lambda k: predict(*[("frame", png(0, (8, 8)))] * 65, task="clip4"),
        413,
        "payload_too_large",
    ),
    (
        "clip-gif-100-frames",
        lambda k: predict(("image", gif(100, size=(8, 8))), task="clip4", name="c.gif", ctype="image/gif"),
        413,
        "payload_too_large",
    ),
    ("clip-3-frames", lambda k: predict(*[("frame", png(0, (8, 8)))] * 3, task="clip4"), 400, "invalid_input"),
    (
        "clip-gif-2-frames",
        lambda k: predict(("image", gif(2, size=(8, 8))), task="clip4", name="c.gif", ctype="image/gif"),
        400,
        "invalid_input",
    ),
    ("frames-to-image-task", lambda k: predict(*[("frame", PNG)] * 4), 400, "invalid_input"),
    (
        "clip-corrupt-frame",
        lambda k: predict(*[("frame", PNG)] * 3, ("frame", PNG[:100]), task="clip4"),
        400,
        "invalid_input",
    ),
    # query and path: unicode and traversal task names
    ("task-dotdot-slash", lambda k: predict(("image", PNG), task="../x"), 400, "invalid_input"),
    ("task-slash", lambda k: predict(("image", PNG), task="a/b"), 400, "invalid_input"),
    (
        "task-encoded-dotdot",
        lambda k: raw("POST", "/predict?task=%2e%2e", "Content-Type: image/png\r\n", PNG),
        400,
        "invalid_input",
    ),
    (
        "task-encoded-traversal",
        lambda k: raw("POST", "/predict?task=..%2F..%2Fetc%2Fpasswd", "Content-Type: image/png\r\n", PNG),
        400,
        "invalid_input",
    ),
    ("task-unicode", lambda k: predict(("image", PNG), task="タスク"), 400, "invalid_input"),
    (
        "task-nul",
        lambda k: raw("POST", "/predict?task=t00%00x", "Content-Type: image/png\r\n", PNG),
        400,
        "invalid_input",
    ),
    ("task-too-long", lambda k: predict(("image", PNG), task="a" * 65), 400, "invalid_input"),
    (
        "task-missing",
        lambda k: Req(url="/predict", kw={"files": {"image": ("a.png", PNG, "image/png")}}),
        400,
        "invalid_input",
    ),
    (
        "top-k-zero",
        lambda k: Req(url="/predict?task=t00&top_k=0", kw={"files": {"image": ("a.png", PNG, "image/png")}}),
        400,
        "invalid_input",
    ),
    (
        "top-k-not-a-number",
        lambda k: Req(url="/predict?task=t00&top_k=x", kw={"files": {"image": ("a.png", PNG, "image/png")}}),
        400,
        "invalid_input",
    ),
    ("unknown-task", lambda k: predict(("image", PNG), task="nope"), 404, "not_found"),
    ("get-adapter-encoded-traversal", lambda k: raw("GET", "/adapters/..%2F..%2Fetc%2Fpasswd"), 404, "not_found"),
    ("get-adapter-encoded-dotdot", lambda k: raw("GET", "/adapters/%2e%2e"), 404, "not_found"),
    ("get-adapter-unicode", lambda k: raw("GET", "/adapters/%E3%82%BF%E3%82%B9%E3%82%AF"), 404, "not_found"),
    ("delete-encoded-dotdot", lambda k: raw("DELETE", "/adapters/%2e%2e"), 404, "not_found"),
    ("delete-encoded-traversal", lambda k: raw("DELETE", "/adapters/..%2Fstore-shared%2Ft00"), 404, "not_found"),
    (
        "content-length-not-a-number",
        lambda k: raw("POST", "/predict?task=t00", "Content-Type: image/png\r\nContent-Length: abc\r\n"),
        400,
        None,
    ),
    # ^ refused by uvicorn's HTTP parser with a plain-text 400 before the app sees it
    ("put-predict", lambda k: Req(method="PUT", kw={"content": PNG}), 405, "method_not_allowed"),
    # adapter uploads
    ("upload-torch-checkpoint", lambda k: upload(_torch_checkpoint()), 422, "invalid_adapter"),
    ("upload-pickle", lambda k: upload(pickle.dumps({"head.weight": [0.0] * 8}, protocol=2)), 422, "invalid_adapter"),
    ("upload-zero-bytes", lambda k: upload(b""), 422, "invalid_adapter"),
    ("upload-random-bytes", lambda k: upload(bytes(range(256)) * 64), 422, "invalid_adapter"),
    ("upload-huge-declared-header", lambda k: upload(struct.pack("<Q", 2**62) + b'{"a": 1}'), 422, "invalid_adapter"),
    (
        "upload-header-past-end",
        lambda k: upload(struct.pack("<Q", 5000) + b'{"__metadata__": {}}'),
        422,
        "invalid_adapter",
    ),
    ("upload-header-not-json", lambda k: upload(struct.pack("<Q", 12) + b"not json!!!!"), 422, "invalid_adapter"),
    (
        "upload-metadata-9MiB",
        lambda k: upload(_edit(_adapter(k), {"metrics": json.dumps({"x": "a" * 9 * MiB})})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-labels-not-json",
        lambda k: upload(_edit(_adapter(k), {"labels": "[not json"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-config-not-json",
        lambda k: upload(_edit(_adapter(k), {"config": "{oops"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-metadata-input-not-object",
        lambda k: upload(_edit(_adapter(k), {"input": "[1, 2]"})),
        422,
        "invalid_adapter",
    ),
    ("upload-no-metadata", lambda k: upload(_edit(_adapter(k), drop_meta=True)), 422, "invalid_adapter"),
    ("upload-other-format", lambda k: upload(_edit(_adapter(k), {"format": "something-else"})), 422, "invalid_adapter"),
    ("upload-vpt-method", lambda k: upload(_edit(_adapter(k), {"method": "vpt"})), 422, "invalid_adapter"),
    (
        "upload-labels-count-mismatch",
        lambda k: upload(_edit(_adapter(k), {"labels": '["a", "b", "c"]'})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-nan-weight",
        lambda k: upload(_edit(_adapter(k), tensors=_poison("adapters.0.down.weight", float("nan")))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-inf-weight",
        lambda k: upload(_edit(_adapter(k), tensors=_poison("head.bias", float("inf")))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-integer-tensor",
        lambda k: upload(_edit(_adapter(k), tensors=_set("head.bias", torch.zeros(4, dtype=torch.int32)))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-missing-tensor",
        lambda k: upload(_edit(_adapter(k), tensors=lambda t: t.pop("head.bias"))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-extra-tensor",
        lambda k: upload(_edit(_adapter(k), tensors=_set("evil", torch.zeros(1)))),
        422,
        "invalid_adapter",
    ),
    ("upload-truncated", lambda k: upload(_adapter(k)[:-64]), 422, "invalid_adapter"),
    (
        "upload-wrong-head-width",
        lambda k: upload(_edit(_adapter(k), tensors=_set("head.weight", torch.randn(4, 64)))),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-branch-width",
        lambda k: upload(_edit(_adapter(k), tensors=_narrow_branch)),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-fingerprint",
        lambda k: upload(_edit(_adapter(k), {"backbone_fingerprint": "sha256:0123456789abcdef"})),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-wrong-input-size",
        lambda k: upload(_edit(_adapter(k), _spec(_adapter(k), size=32))),
        409,
        "incompatible_adapter",
    ),
    (
        "upload-zero-std",
        lambda k: upload(_edit(_adapter(k), _spec(_adapter(k), std=[0.0, 0.0, 0.0]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-nan-mean",
        lambda k: upload(_edit(_adapter(k), _spec(_adapter(k), mean=["NaN", 0.5, 0.5]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-mean-two-values",
        lambda k: upload(_edit(_adapter(k), _spec(_adapter(k), mean=[0.5, 0.5]))),
        422,
        "invalid_adapter",
    ),
    (
        "upload-size-float",
        lambda k: upload(_edit(_adapter(k), _spec(_adapter(k), size=28.0))),
        422,
        "invalid_adapter",
    ),
    ("upload-name-dotdot-slash", lambda k: upload(_adapter(k), "../x"), 422, "invalid_adapter"),
    ("upload-name-slash", lambda k: upload(_adapter(k), "a/b"), 422, "invalid_adapter"),
    ("upload-name-encoded-dotdot", lambda k: upload(_adapter(k), "%2e%2e"), 422, "invalid_adapter"),
    ("upload-name-unicode", lambda k: upload(_adapter(k), "tâche"), 422, "invalid_adapter"),
    (
        "upload-name-in-metadata-traversal",
        lambda k: upload(_edit(_adapter(k), {"task": "../../evil"})),
        422,
        "invalid_adapter",
    ),
    (
        "upload-not-multipart",
        lambda k: Req(
            url="/adapters", kw={"content": _adapter(k), "headers": {"Content-Type": "application/octet-stream"}}
        ),
        415,
        "unsupported_media_type",
    ),
    (
        "upload-no-file-field",
        lambda k: Req(url="/adapters", kw={"data": {"task": "x"}, "files": {"other": ("a", b"x", "x/y")}}),
        422,
        "validation_error",
    ),
    ("upload-over-size-limit", lambda k: upload(b"\0" * (13 * MiB)), 413, "payload_too_large"),
]


def _send(server: Server, req: Req) -> tuple[int, dict, dict[str, str]]:
    if req.raw is not None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(req.raw)
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            body = resp.read()
            return resp.status, _json(body), {k.lower(): v for k, v in resp.getheaders()}
    r = httpx.request(req.method, f"{server.url}{req.url}", timeout=60, **req.kw)
    return r.status_code, _json(r.content), dict(r.headers)


def _json(body: bytes) -> dict:
    """The JSON body, or ``{"raw": text}`` for the few answers uvicorn gives before the app sees a request."""
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"raw": body.decode(errors="replace")}


def _healthy(server: Server, images) -> None:
    assert server.alive(), server.log_tail()
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    r = httpx.post(f"{server.url}/predict?task=t00", files=[("image", images[0])], timeout=30)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def store_before(shared_server: Server) -> set[str]:
    return {p.name for p in shared_server.store.iterdir()}


def test_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("build", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input(
    build: Build, status: int, code: str | None, shared_server: Server, kit: Kit, images, store_before
):
    got, body, _ = _send(shared_server, build(kit))
    if code is None:
        assert got == status, body
    else:
        assert (got, body.get("error", {}).get("code")) == (status, code), body
        assert body["error"]["message"]
    _healthy(shared_server, images)


def _mutations(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` images of every format with a few random bytes overwritten, cut or repeated."""
    import random

    rng = random.Random(seed)
    sources = []
    for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")):
        buf = io.BytesIO()
        Image.new(mode, (23, 17), 100).save(buf, fmt)
        sources.append((fmt, buf.getvalue()))
    out = []
    for i in range(n):
        fmt, data = sources[i % len(sources)]
        b = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            pos = rng.randrange(len(b))
            if kind < 0.6:
                b[pos] = rng.randrange(256)
            elif kind < 0.8:
                del b[pos : pos + rng.randint(1, 64)]
            else:
                b[pos:pos] = b[pos : pos + rng.randint(1, 64)] * rng.randint(1, 4)
        out.append((fmt, bytes(b)))
    return out


def test_mutated_images_never_500(shared_server: Server, images):
    """Mutation fuzzing of the decoders: 96 damaged images of six formats, as image parts and clip frames."""
    statuses = []
    with httpx.Client(base_url=shared_server.url, timeout=60) as client:
        for i, (fmt, data) in enumerate(_mutations(96)):
            if i % 4 == 3:  # a damaged frame among good ones
                files = [("frame", ("f.png", PNG, "image/png"))] * 3 + [("frame", (f"f.{fmt}", data, "image/png"))]
                r = client.post("/predict?task=clip4", files=files)
            else:
                r = client.post("/predict?task=t00", files=[("image", (f"x.{fmt.lower()}", data, "image/png"))])
            statuses.append(r.status_code)
            assert r.status_code in (200, 400, 413), (fmt, i, r.text)
    _healthy(shared_server, images)
    assert statuses.count(400) > 10, statuses


def test_overflowing_weights_answer_422_not_500(shared_server: Server, kit: Kit, images):
    """Finite weights near the float32 maximum pass the upload checks but overflow to NaN scores: the request
    gets a clear 422, other tasks in the same batches are unaffected, and the task can be deleted."""
    data = _edit(_adapter(kit), tensors=lambda t: t.__setitem__("head.weight", torch.full_like(t["head.weight"], 3e38)))
    status, body, _ = _send(shared_server, upload(data, "overflow"))
    assert status == 201, body
    try:
        status, body, _ = _send(shared_server, predict(("image", PNG), task="overflow"))
        assert (status, body["error"]["code"]) == (422, "invalid_adapter"), body
        _healthy(shared_server, images)
    finally:
        assert httpx.delete(f"{shared_server.url}/adapters/overflow", timeout=30).status_code == 200


def _stream(
    port: int, target: str, ctype: str, total: int, prefix: bytes = b"", chunk: int = MiB
) -> tuple[int, dict, int, float]:
    """Streams ``prefix`` and ``total`` bytes (chunked, no Content-Length) until the server answers; returns the
    status, the body, the bytes handed to the socket and the seconds taken."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
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


@pytest.mark.parametrize("target", ["/predict?task=t00", "/adapters"])
def test_100MB_streamed_body_gets_413_without_buffering(target: str, shared_server: Server, images):
    """100 MB sent chunked (no Content-Length): 413 once the limit is passed, long before the end of the body."""
    prefix = b""
    ctype = "image/png"
    if target == "/adapters":  # a well-formed multipart start, then a 100 MB `file` part
        ctype = "multipart/form-data; boundary=b"
        prefix = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.safetensors"\r\n\r\n'
    before = rss_mb(shared_server.pid)
    status, body, sent, _ = _stream(shared_server.port, target, ctype, 100 * MiB, prefix)
    after = rss_mb(shared_server.pid)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert sent < 50 * MiB, f"the server took {sent:,} bytes before answering"
    assert after - before < 64, (before, after)
    _healthy(shared_server, images)


def test_100MB_declared_body_refused_before_reading(shared_server: Server, images):
    req = raw("POST", "/predict?task=t00", f"Content-Type: image/png\r\nContent-Length: {100 * MiB}\r\n")
    start = time.monotonic()
    status, body, _ = _send(shared_server, req)  # the body is never sent: the answer must not wait for it
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert time.monotonic() - start < 10
    _healthy(shared_server, images)


def test_store_untouched_and_no_internal_error(shared_server: Server, kit: Kit, store_before: set[str]):
    """Runs after the cases: no file appeared outside the store or in it, and no 500 was logged. (An accepted
    upload keeps its version under .history/: content-named copies only, no temp file.)"""
    names = {p.name for p in shared_server.store.iterdir()}
    assert names - {".history"} == store_before - {".history"}
    kept = list((shared_server.store / ".history").glob("*/*"))
    assert all(p.name.endswith(".safetensors") and not p.name.startswith(".") for p in kept), kept
    outside = {p.name for p in kit.workdir.iterdir()}
    assert not {n for n in outside if n.endswith(".safetensors") and n != "backbone.safetensors"}, outside
    log = shared_server.log_tail(200_000)
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
