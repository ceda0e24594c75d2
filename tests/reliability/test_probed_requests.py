"""Requests that probing a running server found mishandled, one test per case: clip frames over the pixel limit, the
OIP pixel budget per request, Host and Origin, closed metric labels, FP32 values out of range, the decoder
allow-list. They run against one server process of their own (``probed_server``).
"""

from __future__ import annotations

import base64

import httpx
import pytest
from PIL import Image

from benchmarks.reliability import Kit, Server
from tests.reliability.probes import (
    MAX_REQUEST_PIXELS,
    SIZE,
    clip_ok,
    gif_of,
    healthy,
    make_victim,
    metric_samples,
    metrics,
    png_side,
    tiff_of,
)
from tests.support import encode

pytestmark = pytest.mark.e2e


# -- Every frame of every clip source is checked before it is decoded --------------------------------------------------
@pytest.mark.parametrize(
    "source",
    ["gif-big-last-frame", "tiff-big-last-page", "gif-big-frame-in-frame-list", "oip-gif-big-last-frame"],
)
def test_clip_frames_over_the_pixel_limit_are_refused_before_decoding(source: str, probed_server: Server):
    big = 1500  # 2.25M pixels: over max_image_pixels (2M); the clip's pixels in all stay under max_request_pixels
    url = f"{probed_server.url}/predict?task=clip4"
    if source == "gif-big-last-frame":
        r = httpx.post(url, content=gif_of([8, 8, 8, big]), headers={"Content-Type": "image/gif"}, timeout=60)
    elif source == "tiff-big-last-page":
        r = httpx.post(url, content=tiff_of([8, 8, 8, big]), headers={"Content-Type": "image/tiff"}, timeout=60)
    elif source == "gif-big-frame-in-frame-list":
        files = [("frame", (f"f{i}.png", png_side(8), "image/png")) for i in range(3)]
        files.append(("frame", ("f3.gif", gif_of([big, 8]), "image/gif")))  # a frame field: its first frame
        r = httpx.post(url, files=files, timeout=60)
    else:
        doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [
            base64.b64encode(gif_of([8, 8, 8, big])).decode()]}]}  # fmt: skip
        r = httpx.post(f"{probed_server.url}/v2/models/clip4/infer", json=doc, timeout=60)
    assert r.status_code == 413, r.text
    assert "pixels" in r.text
    clip_ok(probed_server)


# -- An OIP request has one pixel budget, whatever its rows ------------------------------------------------------------
@pytest.mark.parametrize("shape", ["rows-of-frames", "animated-elements"])
def test_oip_clip_pixel_budget_is_per_request(shape: str, probed_server: Server):
    side = 1000  # 1M pixels a frame: one 4-frame clip is exactly max_request_pixels, two are twice it
    if shape == "rows-of-frames":
        frame = base64.b64encode(png_side(side)).decode()
        tensor = {"name": "image", "datatype": "BYTES", "shape": [2, 4], "data": [[frame] * 4, [frame] * 4]}
    else:
        clip = base64.b64encode(gif_of([side] * 4)).decode()
        tensor = {"name": "image", "datatype": "BYTES", "shape": [2], "data": [clip, clip]}
    one = {"inputs": [{**tensor, "shape": [1, *tensor["shape"][1:]], "data": tensor["data"][:1]}]}
    r = httpx.post(f"{probed_server.url}/v2/models/clip4/infer", json=one, timeout=60)
    assert r.status_code == 200, r.text  # one clip fits the budget
    r = httpx.post(f"{probed_server.url}/v2/models/clip4/infer", json={"inputs": [tensor]}, timeout=60)
    assert r.status_code == 413, r.text
    assert f"{MAX_REQUEST_PIXELS:,}" in r.json()["error"]


# -- Host and Origin ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "DELETE", "POST"])
def test_foreign_host_is_refused(method: str, probed_server: Server, kit: Kit):
    victim = make_victim(probed_server, kit)
    before = httpx.get(f"{probed_server.url}/adapters", timeout=30).json()
    kw: dict = {}
    path = "/adapters" if method != "DELETE" else f"/adapters/{victim}"
    if method == "POST":
        kw = {"files": {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}}
    headers = {"Host": f"rebind.evil.example:{probed_server.port}"}
    r = httpx.request(method, f"{probed_server.url}{path}", headers=headers, timeout=30, **kw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_host"
    assert "rebind.evil.example" in r.json()["error"]["message"]
    assert "ADAPTFORMER_ALLOWED_HOSTS" in r.json()["error"]["message"]
    assert httpx.get(f"{probed_server.url}/adapters", timeout=30).json() == before
    for host in ("localhost", "127.0.0.1", "[::1]"):  # the loopback names are allowed, with or without a port
        for value in (host, f"{host}:{probed_server.port}"):
            r = httpx.get(f"{probed_server.url}/adapters", headers={"Host": value}, timeout=30)
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
    request_kind: str, origin: str, probed_server: Server, kit: Kit
):
    victim = make_victim(probed_server, kit)
    before = httpx.get(f"{probed_server.url}/adapters", timeout=30).json()
    headers = {"Origin": origin}
    if request_kind == "upload":
        files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
        r = httpx.post(f"{probed_server.url}/adapters", files=files, headers=headers, timeout=30)
    elif request_kind == "delete":
        r = httpx.delete(f"{probed_server.url}/adapters/{victim}", headers=headers, timeout=30)
    elif request_kind == "predict":
        headers["Content-Type"] = "image/png"
        r = httpx.post(f"{probed_server.url}/predict?task=t00", content=png_side(40), headers=headers, timeout=30)
    else:
        doc = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png_side(40)).decode()]}
            ]
        }
        r = httpx.post(f"{probed_server.url}/v2/models/t00/infer", json=doc, headers=headers, timeout=30)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert origin in r.json()["error"]["message"]
    assert httpx.get(f"{probed_server.url}/adapters", timeout=30).json() == before


def test_same_origin_and_originless_requests_still_work(probed_server: Server, kit: Kit):
    """The playground page posts from the server's own origin; scripts and curl send no Origin at all."""
    files = {"file": ("a.safetensors", kit.tasks["t05"], "application/octet-stream")}
    r = httpx.post(
        f"{probed_server.url}/adapters",
        data={"task": "same-origin"},
        files=files,
        headers={"Origin": probed_server.url},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    r = httpx.delete(f"{probed_server.url}/adapters/same-origin", headers={"Origin": probed_server.url}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{probed_server.url}/adapters", headers={"Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 200, r.text  # reading is not state-changing (a browser cannot read it cross-site)
    healthy(probed_server)


# -- Metric labels come from a closed set ------------------------------------------------------------------------------
# Methods the HTTP parser passes on to the app (httptools refuses tokens it does not know, such as PROBE0, with a
# 400 of its own; h11 passes any token): each must count as "other".
WEBDAV_METHODS = ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT", "PURGE"]


def test_metric_labels_come_from_a_closed_set(probed_server: Server):
    for i in range(40):
        httpx.request(f"PROBE{i}", f"{probed_server.url}/adapters", timeout=30)
        httpx.get(f"{probed_server.url}/no/such/route/{i}", timeout=30)
    for method in WEBDAV_METHODS:
        httpx.request(method, f"{probed_server.url}/adapters", timeout=30)
    text = metrics(probed_server)
    methods = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}
    samples = metric_samples(text, "adaptformer_http_requests_total")
    assert samples
    for labels, _ in samples:
        assert labels["method"] in methods, labels
    assert any(labels["method"] == "other" for labels, _ in samples)
    assert any(labels["route"] == "other" for labels, _ in samples)
    assert "PROBE" not in text and "/no/such" not in text
    assert not [m for m in WEBDAV_METHODS if m in text]


# -- FP32 values out of range blame the input --------------------------------------------------------------------------
def _fp32(probed_server: Server, body: str) -> httpx.Response:
    return httpx.post(
        f"{probed_server.url}/v2/models/t00/infer",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def _fp32_doc(value: str) -> str:
    values = ", ".join([value] + ["0.5"] * (3 * SIZE * SIZE - 1))
    return (
        f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1, 3, {SIZE}, {SIZE}], "data": [{values}]}}]}}'
    )


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1" + "0" * 400, "3.5e38"])
def test_oip_fp32_overflowing_value_is_a_4xx(value: str, probed_server: Server):
    r = _fp32(probed_server, _fp32_doc(value))
    assert 400 <= r.status_code < 500, r.text
    assert "input" in r.json()["error"]
    healthy(probed_server)


@pytest.mark.parametrize("value", ["3e38", "-3e38", "1e6"])
def test_oip_fp32_value_out_of_the_preprocessed_range_is_a_422_blaming_the_input(value: str, probed_server: Server):
    r = _fp32(probed_server, _fp32_doc(value))
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert "input" in message and "preprocess" in message
    assert "weight" not in message and "adapter" not in message
    ok = _fp32(probed_server, _fp32_doc("2.5"))
    assert ok.status_code == 200, ok.text
    healthy(probed_server)


@pytest.mark.parametrize("where", ["body", "data"])
def test_oip_deeply_nested_json_is_a_400(where: str, probed_server: Server):
    """The OIP half of deep nesting: JSON nested deeper than the parser's recursion limit."""
    deep = "[" * 100_000 + "]" * 100_000
    if where == "body":
        body = deep
    else:
        body = f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1], "data": {deep}}}]}}'
    r = _fp32(probed_server, body)
    assert r.status_code == 400, r.text
    assert "nested" in r.json()["error"]
    healthy(probed_server)


# -- Only PNG, JPEG, WebP, GIF, BMP and TIFF are decoded ---------------------------------------------------------------
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "PPM", "ICO", "SGI", "EPS"])
def test_formats_outside_the_allow_list_are_not_decoded(fmt: str, probed_server: Server):
    data = _EPS if fmt == "EPS" else encode(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    r = httpx.post(
        f"{probed_server.url}/predict?task=t00", content=data, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "PNG, JPEG, WebP, GIF, BMP or TIFF" in message
    assert "ghostscript" not in message.lower()
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]}
    r = httpx.post(f"{probed_server.url}/v2/models/t00/infer", json=doc, timeout=30)
    assert r.status_code == 400, r.text
    healthy(probed_server)


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


def test_allowed_formats_still_decode(probed_server: Server):
    img = Image.new("RGB", (24, 24), (10, 200, 30))
    for fmt, ctype in [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
                       ("BMP", "image/bmp"), ("TIFF", "image/tiff")]:  # fmt: skip
        r = httpx.post(
            f"{probed_server.url}/predict?task=t00",
            content=encode(img, fmt),
            headers={"Content-Type": ctype},
            timeout=30,
        )
        assert r.status_code == 200, (fmt, r.text)


def test_no_internal_error_logged(probed_server: Server):
    assert "internal error" not in probed_server.log_tail(500_000)
