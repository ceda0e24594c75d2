"""Requests and connections that probing a running server found mishandled, one test per case: clip frames over
the pixel limit, the OIP pixel budget per request, Host and Origin, closed metric labels, clients that abort
mid-body, FP32 values out of range, stalled connections, the decoder allow-list. They run against one server
process of their own: small pixel limits, 2-second header and body timeouts, default (loopback) host rules and no
keys.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from benchmarks.reliability import Kit, Server
from tests.support import encode, png

pytestmark = pytest.mark.e2e

MAX_IMAGE_PIXELS = 2_000_000
MAX_REQUEST_PIXELS = 4_000_000
TIMEOUT_S = 2
SIZE = 28  # the input side of the embedded architecture's tasks


@pytest.fixture(scope="module")
def server(kit: Kit) -> Iterator[Server]:
    store = kit.workdir / "store-probed-requests"
    store.mkdir(parents=True, exist_ok=True)
    (store / "t00.safetensors").write_bytes(kit.tasks["t00"])
    (store / "clip4.safetensors").write_bytes(kit.clip_task())
    # Timeouts as variables: a server without the settings still starts (and the timeout tests fail, not error).
    env = {"ADAPTFORMER_HEADER_TIMEOUT": str(TIMEOUT_S), "ADAPTFORMER_BODY_TIMEOUT": str(TIMEOUT_S)}
    log = kit.workdir / "server-probed-requests.log"
    settings = {"max_image_pixels": MAX_IMAGE_PIXELS, "max_request_pixels": MAX_REQUEST_PIXELS}
    with Server(kit.weights, store, log, env=env, **settings) as s:
        yield s


# -- payloads ----------------------------------------------------------------------------------------------------------
def _png(side: int) -> bytes:
    return png(size=side, color=(0, 90, 200))


def _gif_frame(img: Image.Image) -> bytes:
    """The image descriptor and data of a one-frame GIF, its palette moved into a local color table."""
    data = encode(img, "GIF")
    packed = data[10]
    table = data[13 : 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)]
    pos = 13 + len(table)
    while data[pos] == 0x21:  # extension blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    descriptor = bytearray(data[pos : pos + 10])
    descriptor[9] = (descriptor[9] & 0x78) | 0x80 | (packed & 7)
    return bytes(descriptor) + table + data[pos + 10 : -1]


def _gif(sides: list[int]) -> bytes:
    """An animated GIF on an 8x8 canvas whose frames have the given sides (a frame may be larger than the
    canvas: decoders grow the canvas to it)."""
    frames = [Image.new("P", (s, s), i + 1) for i, s in enumerate(sides)]
    return b"GIF89a" + struct.pack("<HHBBB", 8, 8, 0, 0, 0) + b"".join(_gif_frame(f) for f in frames) + b";"


def _tiff(sides: list[int]) -> bytes:
    pages = [Image.new("RGB", (s, s), (i * 40, 0, 0)) for i, s in enumerate(sides)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")


def _victim(server: Server, kit: Kit) -> str:
    """A task the Host and Origin tests may lose: they must not delete one the other tests use."""
    if httpx.get(f"{server.url}/adapters/victim", timeout=30).status_code == 404:
        files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
        r = httpx.post(f"{server.url}/adapters", data={"task": "victim"}, files=files, timeout=30)
        assert r.status_code == 201, r.text
    return "victim"


def _metrics(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=30).text


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
    return out


def _healthy(server: Server) -> None:
    assert server.alive()
    r = httpx.post(
        f"{server.url}/predict", params={"task": "t00"}, content=_png(40), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200, r.text


def _clip_ok(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/predict",
        params={"task": "clip4"},
        content=_gif([8, 8, 8, 8]),
        headers={"Content-Type": "image/gif"},
    )
    assert r.status_code == 200, r.text


# -- Every frame of every clip source is checked before it is decoded --------------------------------------------------
@pytest.mark.parametrize(
    "source",
    ["gif-big-last-frame", "tiff-big-last-page", "gif-big-frame-in-frame-list", "oip-gif-big-last-frame"],
)
def test_clip_frames_over_the_pixel_limit_are_refused_before_decoding(source: str, server: Server):
    big = 1500  # 2.25M pixels: over max_image_pixels (2M); the clip's pixels in all stay under max_request_pixels
    url = f"{server.url}/predict?task=clip4"
    if source == "gif-big-last-frame":
        r = httpx.post(url, content=_gif([8, 8, 8, big]), headers={"Content-Type": "image/gif"}, timeout=60)
    elif source == "tiff-big-last-page":
        r = httpx.post(url, content=_tiff([8, 8, 8, big]), headers={"Content-Type": "image/tiff"}, timeout=60)
    elif source == "gif-big-frame-in-frame-list":
        files = [("frame", (f"f{i}.png", _png(8), "image/png")) for i in range(3)]
        files.append(("frame", ("f3.gif", _gif([big, 8]), "image/gif")))  # a frame field: its first frame
        r = httpx.post(url, files=files, timeout=60)
    else:
        doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [
            base64.b64encode(_gif([8, 8, 8, big])).decode()]}]}  # fmt: skip
        r = httpx.post(f"{server.url}/v2/models/clip4/infer", json=doc, timeout=60)
    assert r.status_code == 413, r.text
    assert "pixels" in r.text
    _clip_ok(server)


# -- An OIP request has one pixel budget, whatever its rows ------------------------------------------------------------
@pytest.mark.parametrize("shape", ["rows-of-frames", "animated-elements"])
def test_oip_clip_pixel_budget_is_per_request(shape: str, server: Server):
    side = 1000  # 1M pixels a frame: one 4-frame clip is exactly max_request_pixels, two are twice it
    if shape == "rows-of-frames":
        frame = base64.b64encode(_png(side)).decode()
        tensor = {"name": "image", "datatype": "BYTES", "shape": [2, 4], "data": [[frame] * 4, [frame] * 4]}
    else:
        clip = base64.b64encode(_gif([side] * 4)).decode()
        tensor = {"name": "image", "datatype": "BYTES", "shape": [2], "data": [clip, clip]}
    one = {"inputs": [{**tensor, "shape": [1, *tensor["shape"][1:]], "data": tensor["data"][:1]}]}
    r = httpx.post(f"{server.url}/v2/models/clip4/infer", json=one, timeout=60)
    assert r.status_code == 200, r.text  # one clip fits the budget
    r = httpx.post(f"{server.url}/v2/models/clip4/infer", json={"inputs": [tensor]}, timeout=60)
    assert r.status_code == 413, r.text
    assert f"{MAX_REQUEST_PIXELS:,}" in r.json()["error"]


# -- Host and Origin ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_foreign_host_is_refused(method: str, server: Server, kit: Kit):
    victim = _victim(server, kit)
    before = httpx.get(f"{server.url}/adapters", timeout=30).json()
    kw: dict = {}
    path = "/adapters" if method != "DELETE" else f"/adapters/{victim}"
    if method == "POST":
        kw = {"files": {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}}
    headers = {"Host": f"rebind.evil.example:{server.port}"}
    r = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_host"
    assert "rebind.evil.example" in r.json()["error"]["message"]
    assert "ADAPTFORMER_ALLOWED_HOSTS" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/adapters", timeout=30).json() == before
    for host in ("localhost", "127.0.0.1", "[::1]"):  # the loopback names are allowed, with or without a port
        for value in (host, f"{host}:{server.port}"):
            r = httpx.get(f"{server.url}/adapters", headers={"Host": value}, timeout=30)
            assert r.status_code == 200, (value, r.text)


def test_allowed_hosts_default_to_loopback_names_and_the_bound_host(monkeypatch: pytest.MonkeyPatch):
    from adaptformer_server.hosts import _host_name, allowed_hosts
    from adaptformer_server.settings import Settings

    monkeypatch.delenv("ADAPTFORMER_ALLOWED_HOSTS", raising=False)
    assert allowed_hosts(Settings(host="127.0.0.1")) == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts(Settings(host="10.1.2.3")) == ("localhost", "127.0.0.1", "::1", "10.1.2.3")
    assert allowed_hosts(Settings(host="serve.internal")) == ("localhost", "127.0.0.1", "::1", "serve.internal")
    assert allowed_hosts(Settings(host="0.0.0.0")) == ("*",)  # every interface: names it cannot know
    assert allowed_hosts(Settings(host="::")) == ("*",)
    configured = Settings(host="0.0.0.0", allowed_hosts=" API.Example.com., *.corp.example ,[::1]")
    assert allowed_hosts(configured) == ("api.example.com", "*.corp.example", "::1")
    assert [_host_name(h) for h in ("[::1]:8000", "Example.COM.:80", "localhost", "[fe80::1]")] == [
        "::1",
        "example.com",
        "localhost",
        "fe80::1",
    ]


@pytest.mark.parametrize(
    "request_kind", ["upload", "delete", "predict", "oip-infer"], ids=lambda k: k.replace("_", "-")
)
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
def test_state_changing_request_with_foreign_origin_is_refused(
    request_kind: str, origin: str, server: Server, kit: Kit
):
    victim = _victim(server, kit)
    before = httpx.get(f"{server.url}/adapters", timeout=30).json()
    headers = {"Origin": origin}
    if request_kind == "upload":
        files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
        r = httpx.post(f"{server.url}/adapters", files=files, headers=headers, timeout=30)
    elif request_kind == "delete":
        r = httpx.delete(f"{server.url}/adapters/{victim}", headers=headers, timeout=30)
    elif request_kind == "predict":
        headers["Content-Type"] = "image/png"
        r = httpx.post(f"{server.url}/predict?task=t00", content=_png(40), headers=headers, timeout=30)
    else:
        doc = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(_png(40)).decode()]}
            ]
        }
        r = httpx.post(f"{server.url}/v2/models/t00/infer", json=doc, headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert origin in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/adapters", timeout=30).json() == before


def test_same_origin_and_originless_requests_still_work(server: Server, kit: Kit):
    """The playground page posts from the server's own origin; scripts and curl send no Origin at all."""
    files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
    r = httpx.post(
        f"{server.url}/adapters", data={"task": "same-origin"}, files=files, headers={"Origin": server.url}, timeout=30
    )
    assert r.status_code == 201, r.text
    r = httpx.delete(f"{server.url}/adapters/same-origin", headers={"Origin": server.url}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{server.url}/adapters", headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 200, r.text  # reading is not state-changing (a browser cannot read it cross-site)
    _healthy(server)


# -- Metric labels come from a closed set ------------------------------------------------------------------------------
# Methods the HTTP parser passes on to the app (httptools refuses tokens it does not know, such as PROBE0, with a
# 400 of its own; h11 passes any token): each must count as "other".
WEBDAV_METHODS = ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT", "PURGE"]


def test_metric_labels_come_from_a_closed_set(server: Server):
    for i in range(40):
        httpx.request(f"PROBE{i}", f"{server.url}/adapters", timeout=30)
        httpx.get(f"{server.url}/no/such/route/{i}", timeout=30)
    for method in WEBDAV_METHODS:
        httpx.request(method, f"{server.url}/adapters", timeout=30)
    text = _metrics(server)
    methods = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    samples = _samples(text, "adaptformer_http_requests_total")
    assert samples
    for labels, _ in samples:
        assert labels["method"] in methods, labels
    assert any(labels["method"] == "other" for labels, _ in samples)
    assert any(labels["route"] == "other" for labels, _ in samples)
    assert "PROBE" not in text and "/no/such" not in text
    assert not [m for m in WEBDAV_METHODS if m in text]


# -- A client that aborts mid-body is not a server bug -----------------------------------------------------------------
def _abort_mid_body(server: Server, path: str, content_type: str, prefix: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 500000\r\n\r\n"
        )
        s.sendall(head.encode() + prefix)
        time.sleep(0.3)


def test_client_abort_mid_body_is_not_a_500(server: Server, kit: Kit):
    part = b'--b\r\nContent-Disposition: form-data; name="%s"; filename="x"\r\nContent-Type: %s\r\n\r\n'
    cases = [
        ("/predict?task=t00", "multipart/form-data; boundary=b", part % (b"image", b"image/png") + _png(64)[:200]),
        ("/predict?task=t00", "image/png", _png(64)[:200]),
        ("/adapters", "multipart/form-data; boundary=b", part % (b"file", b"application/octet-stream") + b"x" * 2000),
        ("/v2/models/t00/infer", "application/json", b'{"inputs": [{"name": "image", "data": ["'),
    ]
    for path, ctype, prefix in cases:
        _abort_mid_body(server, path, ctype, prefix)
    routes = {"/predict", "/adapters", "/v2/models/{task}/infer"}

    def aborted() -> list[tuple[dict[str, str], float]]:
        return [
            (labels, n)
            for labels, n in _samples(_metrics(server), "adaptformer_http_requests_total")
            if labels["route"] in routes and labels["status"] in ("499", "500")
        ]

    deadline = time.monotonic() + 20
    while sum(n for _, n in aborted()) < len(cases) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = _metrics(server)
    assert sum(n for _, n in aborted()) == len(cases), aborted()
    for name in ("adaptformer_http_requests_total", "adaptformer_predict_requests_total", "adaptformer_uploads_total"):
        assert not [labels for labels, _ in _samples(text, name) if labels["status"] == "500"], name
    assert {labels["status"] for labels, _ in aborted()} == {"499"}
    assert "internal error" not in server.log_tail(200_000)
    _healthy(server)


# -- FP32 values out of range blame the input --------------------------------------------------------------------------
def _fp32(server: Server, body: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/t00/infer", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )


def _fp32_doc(value: str) -> str:
    values = ", ".join([value] + ["0.5"] * (3 * SIZE * SIZE - 1))
    return (
        f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1, 3, {SIZE}, {SIZE}], "data": [{values}]}}]}}'
    )


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1" + "0" * 400, "3.5e38"])
def test_oip_fp32_overflowing_value_is_a_4xx(value: str, server: Server):
    r = _fp32(server, _fp32_doc(value))
    assert 400 <= r.status_code < 500, r.text
    assert "input" in r.json()["error"]
    _healthy(server)


@pytest.mark.parametrize("value", ["3e38", "-3e38", "1e6"])
def test_oip_fp32_value_out_of_the_preprocessed_range_is_a_422_blaming_the_input(value: str, server: Server):
    r = _fp32(server, _fp32_doc(value))
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert "input" in message and "preprocess" in message
    assert "weight" not in message and "adapter" not in message
    ok = _fp32(server, _fp32_doc("2.5"))
    assert ok.status_code == 200, ok.text
    _healthy(server)


@pytest.mark.parametrize("where", ["body", "data"])
def test_oip_deeply_nested_json_is_a_400(where: str, server: Server):
    """The OIP half of deep nesting: JSON nested deeper than the parser's recursion limit."""
    deep = "[" * 100_000 + "]" * 100_000
    if where == "body":
        body = deep
    else:
        body = f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1], "data": {deep}}}]}}'
    r = _fp32(server, body)
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["error"]
    _healthy(server)


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
def test_stalled_headers_are_closed(stall: str, server: Server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        if stall == "half-the-headers":
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Slow: ".encode())
        elif stall == "headers-then-keep-alive-then-half-headers":
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            assert b" 200 " in s.recv(65536)
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())
        got, took = _read_until_closed(s, TIMEOUT_S + 4)
    assert took < TIMEOUT_S + 4
    assert b" 200 " not in got
    _healthy(server)


@pytest.mark.parametrize("path", ["/predict?task=t00", "/adapters", "/v2/models/t00/infer"])
def test_stalled_body_gets_408_and_is_closed(path: str, server: Server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
        )
        s.sendall(head.encode())
        got, _ = _read_until_closed(s, TIMEOUT_S + 4)
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    assert b"connection: close" in got.lower()
    assert f"{TIMEOUT_S} s".encode() in got
    _healthy(server)


def test_slow_but_steady_body_is_not_cut(server: Server):
    """The body timeout is the longest wait for the next chunk, not a limit on the whole body."""
    data = _png(40)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        head = (
            f"POST /predict?task=t00 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode())
        step = len(data) // 4 + 1
        for i in range(0, len(data), step):
            s.sendall(data[i : i + step])
            time.sleep(TIMEOUT_S * 0.6)  # more than the timeout in all, less between two chunks
        got, _ = _read_until_closed(s, 30)
    assert got.startswith(b"HTTP/1.1 200 "), got[:300]


# -- Only PNG, JPEG, WebP, GIF, BMP and TIFF are decoded ---------------------------------------------------------------
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "PPM", "ICO", "SGI", "EPS"])
def test_formats_outside_the_allow_list_are_not_decoded(fmt: str, server: Server):
    data = _EPS if fmt == "EPS" else encode(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    r = httpx.post(f"{server.url}/predict?task=t00", content=data, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in message
    assert "ghostscript" not in message.lower()
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]}
    r = httpx.post(f"{server.url}/v2/models/t00/infer", json=doc, timeout=30)
    assert r.status_code == 400, r.text
    _healthy(server)


def test_eps_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch):
    from PIL import EpsImagePlugin

    from adaptformer.data.decode import open_clip, open_image
    from adaptformer.errors import DataError

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    for opener in (open_image, open_clip):
        with pytest.raises(DataError, match="no other format is decoded"):
            opener(_EPS)


def test_allowed_formats_still_decode(server: Server):
    img = Image.new("RGB", (24, 24), (10, 200, 30))
    for fmt, ctype in [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
                       ("BMP", "image/bmp"), ("TIFF", "image/tiff")]:  # fmt: skip
        r = httpx.post(
            f"{server.url}/predict?task=t00", content=encode(img, fmt), headers={"Content-Type": ctype}, timeout=30
        )
        assert r.status_code == 200, (fmt, r.text)


def test_no_internal_error_logged(server: Server):
    assert "internal error" not in server.log_tail(500_000)
