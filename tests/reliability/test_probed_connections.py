"""Connections that probing a running server found mishandled: clients that abort mid-body, stalled headers and
bodies, a slow but steady body. They run against the probed-request tests' server process (``probed_server``).
"""

from __future__ import annotations

import socket
import time

import pytest

from benchmarks.reliability import Kit, Server
from tests.reliability.probes import (
    TIMEOUT_S,
    healthy,
    metric_samples,
    metrics,
    png_side,
)

pytestmark = pytest.mark.e2e


# -- A client that aborts mid-body is not a server bug -----------------------------------------------------------------
def _abort_mid_body(probed_server: Server, path: str, content_type: str, prefix: bytes) -> None:
    with socket.create_connection(("127.0.0.1", probed_server.port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 500000\r\n\r\n"
        )
        s.sendall(head.encode() + prefix)
        time.sleep(0.3)


def test_client_abort_mid_body_is_not_a_500(probed_server: Server, kit: Kit):
    part = b'--b\r\nContent-Disposition: form-data; name="%s"; filename="x"\r\nContent-Type: %s\r\n\r\n'
    cases = [
        ("/predict?task=t00", "multipart/form-data; boundary=b", part % (b"image", b"image/png") + png_side(64)[:200]),
        ("/predict?task=t00", "image/png", png_side(64)[:200]),
        ("/adapters", "multipart/form-data; boundary=b", part % (b"file", b"application/octet-stream") + b"x" * 2000),
        ("/v2/models/t00/infer", "application/json", b'{"inputs": [{"name": "image", "data": ["'),
    ]
    for path, ctype, prefix in cases:
        _abort_mid_body(probed_server, path, ctype, prefix)
    routes = {"/predict", "/adapters", "/v2/models/{task}/infer"}

    def aborted() -> list[tuple[dict[str, str], float]]:
        return [
            (labels, n)
            for labels, n in metric_samples(metrics(probed_server), "adaptformer_http_requests_total")
            if labels["route"] in routes and labels["status"] in ("499", "500")
        ]

    deadline = time.monotonic() + 20
    while sum(n for _, n in aborted()) < len(cases) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = metrics(probed_server)
    assert sum(n for _, n in aborted()) == len(cases), aborted()
    for name in ("adaptformer_http_requests_total", "adaptformer_predict_requests_total", "adaptformer_uploads_total"):
        assert not [labels for labels, _ in metric_samples(text, name) if labels["status"] == "500"], name
    assert {labels["status"] for labels, _ in aborted()} == {"499"}
    assert "internal error" not in probed_server.log_tail(200_000)
    healthy(probed_server)


# -- Stalled connections are closed ------------------------------------------------------------------------------------
def _read_until_closed(s: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection; fails if it is still open after limit_s."""
    start = time.monotonic()
    s.settimeout(limit_s)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"the server kept a stalled connection open for {limit_s} s (received {got[:80]!r})")
    except ConnectionResetError:
        pass
    return got, time.monotonic() - start


@pytest.mark.parametrize(
    "stall",
    ["nothing-sent", "half-the-headers", "headers-then-keep-alive-then-half-headers"],
)
def test_stalled_headers_are_closed(stall: str, probed_server: Server):
    with socket.create_connection(("127.0.0.1", probed_server.port), timeout=10) as s:
        if stall == "half-the-headers":
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\nX-Slow: ".encode())
        elif stall == "headers-then-keep-alive-then-half-headers":
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\n\r\n".encode())
            assert b" 200 " in s.recv(65536)
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\n".encode())
        got, took = _read_until_closed(s, TIMEOUT_S + 4)
    assert took < TIMEOUT_S + 4
    assert b" 200 " not in got
    healthy(probed_server)


@pytest.mark.parametrize("path", ["/predict?task=t00", "/adapters", "/v2/models/t00/infer"])
def test_stalled_body_gets_408_and_is_closed(path: str, probed_server: Server):
    with socket.create_connection(("127.0.0.1", probed_server.port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
        )
        s.sendall(head.encode())
        got, _ = _read_until_closed(s, TIMEOUT_S + 4)
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"connection: close" in got.lower()
    assert f"{TIMEOUT_S} s".encode() in got
    healthy(probed_server)


def test_slow_but_steady_body_is_not_cut(probed_server: Server):
    """The body timeout is the longest wait for the next chunk, not a limit on the whole body."""
    data = png_side(40)
    with socket.create_connection(("127.0.0.1", probed_server.port), timeout=30) as s:
        head = (
            f"POST /predict?task=t00 HTTP/1.1\r\nHost: 127.0.0.1:{probed_server.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode())
        step = len(data) // 4 + 1
        for i in range(0, len(data), step):
            s.sendall(data[i : i + step])
            time.sleep(TIMEOUT_S * 0.6)  # more than the timeout in all, less between two chunks
        got, _ = _read_until_closed(s, 30)
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]
