"""Hostile requests (images, clips, query strings and paths, bodies of any size), table-driven: each case gets its
documented 4xx (docs/API.md) and the shared server stays healthy; mutated images never get a 500; a 100 MB body is
refused without being buffered.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from benchmarks.reliability import Kit, Server, rss_mb
from tests.reliability.hostile import (
    PNG,
    SOLID,
    Build,
    Case,
    MiB,
    Req,
    bmp_claiming,
    cases,
    check_case,
    corrupt,
    healthy,
    multipart_many,
    png_claiming,
    predict,
    raw,
    raw_predict,
    send,
    stream_body,
)
from tests.support import gif, png

pytestmark = pytest.mark.e2e

REQUESTS: list[Case] = [
    # images
    ("truncated-png", lambda k: predict(("image", PNG[: len(PNG) // 2])), 400, "invalid_input"),
    ("corrupt-png", lambda k: predict(("image", corrupt(PNG))), 400, "invalid_input"),
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
        lambda k: predict(("image", png_claiming(100_000, 100_000))),
        413,
        "payload_too_large",
    ),
    (
        "raw-png-claims-100000x100000",
        lambda k: raw_predict(png_claiming(100_000, 100_000), "image/png"),
        413,
        "payload_too_large",
    ),
    (
        "bmp-claims-50000x50000",
        lambda k: predict(("image", bmp_claiming(50_000, 50_000))),
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
    ("5000-file-parts", lambda k: multipart_many(5000, True), 413, "payload_too_large"),
    ("5000-text-fields", lambda k: multipart_many(5000, False), 413, "payload_too_large"),
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
]


def test_the_table_covers_twenty_cases_or_more():
    assert len(REQUESTS) >= 20


@cases(REQUESTS)
def test_hostile_request(build: Build, status: int, code: str | None, shared_server: Server, kit: Kit, images):
    check_case(shared_server, build(kit), status, code, images)


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
    healthy(shared_server, images)
    assert statuses.count(400) > 10, statuses


@pytest.mark.parametrize("target", ["/predict?task=t00", "/adapters"])
def test_100MB_streamed_body_gets_413_without_buffering(target: str, shared_server: Server, images):
    """100 MB sent chunked (no Content-Length): 413 once the limit is passed, long before the end of the body."""
    prefix = b""
    ctype = "image/png"
    if target == "/adapters":  # a well-formed multipart start, then a 100 MB `file` part
        ctype = "multipart/form-data; boundary=b"
        prefix = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.safetensors"\r\n\r\n'
    before = rss_mb(shared_server.pid)
    status, body, sent, _ = stream_body(shared_server.port, target, ctype, 100 * MiB, prefix)
    after = rss_mb(shared_server.pid)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert sent < 50 * MiB, f"the server took {sent:,} bytes before answering"
    assert after - before < 64, (before, after)
    healthy(shared_server, images)


def test_100MB_declared_body_refused_before_reading(shared_server: Server, images):
    req = raw("POST", "/predict?task=t00", f"Content-Type: image/png\r\nContent-Length: {100 * MiB}\r\n")
    start = time.monotonic()
    status, body, _ = send(shared_server, req)  # the body is never sent: the answer must not wait for it
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert time.monotonic() - start < 10
    healthy(shared_server, images)
