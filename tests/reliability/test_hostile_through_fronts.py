"""The third round of hostile probing, sent through a server of several processes: two front processes and an
engine process behind one port (``--workers 2``), beside the same requests to a server of one process.

The round's own tests (tests/reliability/sources/, test_training_jobs.py, test_kserve_requests.py...) run their
cases on one process, most of them in-process; here variants of each class of case travel the fronts' path (a front
parses and checks the request, forwards uploads, sources and jobs to the engine, which owns the store), and must get
the same answers: a 4xx that names the mistake, never a 500, and nothing written. The admin key is given with a
trailing newline, as ``$(cat keyfile)`` would, and must work as the key without it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.reliability import Kit, Server
from tests.reliability.hostile import stream_body
from tests.support import children, png

pytestmark = pytest.mark.e2e

ADMIN = "fronts-admin-key-0123456789"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
SECRET = "pa55-w0rd-fronts"
SIZE = 28  # the input side of the embedded architecture's tasks
BODY_TIMEOUT_S = 2
UPLOAD_LIMIT = 4 * 2**20  # max_upload_bytes


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _classes(*names: str) -> dict[str, bytes]:
    return {f"{name}/{i}.png": png(10 * k + i, size=12) for k, name in enumerate(names) for i in range(3)}


def _zeros_zip(members: int) -> bytes:
    """Members of exactly 1 MiB of zeros: each under the per-member ratio check, the zip as a whole a bomb."""
    return _zip({f"{'ab'[i % 2]}/{i}.png": bytes(1024 * 1024) for i in range(members)})


@pytest.fixture(scope="module", params=["one process", "two fronts"])
def server(request: pytest.FixtureRequest, kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("through-fronts")
    store, allowed = root / "store", root / "allowed"
    store.mkdir()
    allowed.mkdir()
    (store / "t00.safetensors").write_bytes(kit.tasks["t00"])
    os.mkfifo(allowed / "pipe.safetensors")
    env = {"ADAPTFORMER_ADMIN_KEY": ADMIN + "\n", "ADAPTFORMER_BODY_TIMEOUT": str(BODY_TIMEOUT_S)}
    settings: dict[str, object] = {
        "adapter_sources": "http,https,file",
        "adapter_source_dirs": allowed,
        "source_timeout": 2,
        "jobs_dir": root / "jobs",
        "max_upload_bytes": UPLOAD_LIMIT,
    }
    settings["workers"] = 2 if request.param == "two fronts" else 1  # named: TEST_SERVER_WORKERS does not apply
    with Server(kit.weights, store, root / "server.log", env=env, **settings) as s:
        titles = children(s.pid).values()
        fronts = [t for t in titles if t.startswith("adaptformer front")]
        engines = [t for t in titles if t.startswith("adaptformer engine")]
        assert (len(fronts), len(engines)) == ((2, 1) if request.param == "two fronts" else (0, 0)), titles
        s.allowed = allowed  # type: ignore[attr-defined]
        yield s


def _post(server: Server, path: str, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=60, **kw)


def _source(server: Server, source: str) -> httpx.Response:
    body = json.dumps({"task": "fetched", "source": source})  # escaped: a lone surrogate travels too
    return _post(server, "/adapters", content=body, headers={"Content-Type": "application/json", **ADMIN_AUTH})


def _train(server: Server, examples: bytes, **params: object) -> httpx.Response:
    files = {"examples": ("x.zip", examples, "application/zip")}
    return _post(server, "/tasks/t/train", params=params, files=files, headers=ADMIN_AUTH)


def _infer(server: Server, **kw) -> httpx.Response:
    return _post(server, "/v2/models/t00/infer", **kw)


def _message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


# (case, request, status, words the message must hold)
SOURCES = [
    ("unclosed IPv6 bracket", "http://[::1/x", 422, "not a valid URL"),
    ("port 99999", "http://example.com:99999/x.safetensors", 422, "port"),
    ("port abc", "http://example.com:abc/x.safetensors", 422, "port"),
    ("a 9,000-character URL", "http://example.com/" + "a" * 9000, 422, "8,192"),
    ("a lone surrogate", "http://example.com/\ud800.safetensors", 422, "control character"),
    ("no host", "http:///x.safetensors", 422, "no host"),
    ("a scheme not enabled", "hf://acme/adapters/flowers.safetensors", 403, "ADAPTFORMER_ADAPTER_SOURCES"),
    ("loopback", "http://127.0.0.1:9/x.safetensors", 403, "loopback"),
    ("loopback in decimal", "http://2130706433:9/x.safetensors", 403, "loopback"),
    ("cloud metadata", "http://169.254.169.254/latest/meta-data/", 403, "link-local"),
    ("a private address", "https://10.1.2.3/x.safetensors", 403, "private"),
    ("credentials and a token", f"http://user:{SECRET}@127.0.0.1:9/x?token={SECRET}", 403, "loopback"),
]


@pytest.mark.parametrize(("source", "status", "words"), [c[1:] for c in SOURCES], ids=[c[0] for c in SOURCES])
def test_a_hostile_source_gets_its_4xx(server: Server, source: str, status: int, words: str):
    r = _source(server, source)
    assert r.status_code == status, r.text
    assert words in _message(r), r.text
    assert SECRET not in r.text


def test_file_sources_take_regular_files_only(server: Server):
    allowed: Path = server.allowed  # type: ignore[attr-defined]
    r = _source(server, f"file://{allowed}/pipe.safetensors")
    assert r.status_code == 404 and "not a regular file" in _message(r), r.text
    r = _source(server, f"file://{allowed}/x%00.safetensors")
    assert r.status_code == 422, r.text


EXAMPLES = [
    ("a file, then a folder of its name", {"a/x.png": png(1), "a/x.png/y.png": png(2)}, {}, 400, "not both"),
    ("a class folder of 400 bytes", {f"{'é' * 200}/0.png": png(1), "b/0.png": png(2)}, {}, 400, "400 bytes"),
    ("1500 folders deep", {"a/" * 1500 + "x.png": png(1)}, {}, 400, "folders deep"),
    ("a class name of two lines", _classes("a\nb", "c"), {}, 400, "line break"),
    ("a description of two lines", _classes("a", "b"), {"description": "two\nlines"}, 400, "must be one line"),
    ("layers=999", _classes("a", "b"), {"layers": "999"}, 400, "out of range"),
    ("layers=last:999", _classes("a", "b"), {"layers": "last:999"}, 400, "asks for 999 blocks"),
]


@pytest.mark.parametrize(
    ("members", "params", "status", "words"), [c[1:] for c in EXAMPLES], ids=[c[0] for c in EXAMPLES]
)
def test_hostile_training_examples_are_refused_at_submission(server: Server, members, params, status, words):
    r = _train(server, _zip(members), **params)
    assert r.status_code == status, r.text
    assert words in _message(r), r.text
    assert httpx.get(f"{server.url}/jobs", headers=ADMIN_AUTH, timeout=30).json()["jobs"] == []


def test_a_zip_of_many_small_bombs_is_413_before_anything_is_written(server: Server):
    r = _train(server, _zeros_zip(300))
    assert r.status_code == 413 and "zip bomb" in _message(r), r.text


KSERVE = [
    ("a shape of booleans", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [True, 3, SIZE, SIZE]}]}),
    ("a float in a shape", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1.0, 3, SIZE, SIZE]}]}),
    ("a negative shape", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]}),
]


@pytest.mark.parametrize("doc", [c[1] for c in KSERVE], ids=[c[0] for c in KSERVE])
def test_a_kserve_shape_of_anything_but_integers_is_400(server: Server, doc: dict):
    doc["inputs"][0]["data"] = [0.0] * (3 * SIZE * SIZE)
    r = _infer(server, json=doc)
    assert r.status_code == 400, r.text


def test_kserve_bodies_whose_shape_says_413_are_refused_before_parsing(server: Server):
    values = ",".join(["0"] * 3_000_000)  # 6 MB of values for a 2,352-value shape
    text = (
        f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1, 3, {SIZE}, {SIZE}], "data": [{values}]}}]}}'
    )
    r = _infer(server, content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    n = 5_000_000
    blob = b"\0\0\0\0" * n  # n empty elements
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [n], "parameters": {"binary_data_size": len(blob)}}]
    header = json.dumps({"inputs": inputs}).encode()
    r = _infer(
        server,
        content=header + blob,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 413 and "more than 64 images" in r.json()["error"], r.text


def test_a_foreign_host_preflight_is_refused_before_cors(server: Server):
    headers = {"Host": "evil.example", "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{server.url}/adapters", headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", r.text


def test_the_admin_key_given_with_a_newline_works_without_it(server: Server):
    data = {"task": "keyed"}
    files = {"file": ("a.safetensors", httpx.get(f"{server.url}/adapters/t00/file", timeout=30).content)}
    r = _post(server, "/adapters", data=data, files=files, headers=ADMIN_AUTH)
    assert r.status_code == 201, r.text
    assert httpx.delete(f"{server.url}/adapters/keyed", headers=ADMIN_AUTH, timeout=30).status_code == 200


def _raw(server: Server, head: str, body: bytes = b"", limit_s: float = 10) -> bytes:
    """Sends ``head`` and ``body`` on a socket; what came back until the server closed the connection or ``limit_s``
    passed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=limit_s) as sock:
        sock.sendall(head.encode() + body)
        got = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
    return got


def test_an_upload_over_the_limit_is_413_before_it_is_passed_on(server: Server):
    """The front holds the body limits of the routes it passes to the engine: a declared size is refused before
    anything is read, a chunked body as soon as it passes the limit."""
    start = time.monotonic()
    auth = f"Authorization: Bearer {ADMIN}\r\n"
    head = (
        f"POST /adapters HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {100 * 2**20}\r\n\r\n"
    )
    got = _raw(server, head)
    assert got.startswith(b"HTTP/1.1 413 ") and b"the limit is" in got, got[:300]
    assert time.monotonic() - start < 10
    prefix = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.safetensors"\r\n\r\n'
    ctype = "multipart/form-data; boundary=b"
    status, body, sent, _ = stream_body(server.port, "/adapters", ctype, 100 * 2**20, prefix, headers=auth)
    assert status == 413 and body["error"]["code"] == "payload_too_large", body
    assert sent < 4 * UPLOAD_LIMIT, f"{sent:,} bytes taken before the answer"


def test_a_stalled_upload_body_is_408_and_closed(server: Server):
    head = (
        f"POST /adapters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    )
    start = time.monotonic()
    got = _raw(server, head, b"--b\r\n", limit_s=BODY_TIMEOUT_S + 6)
    assert got.startswith(b"HTTP/1.1 408 "), got[:300]
    assert b"connection: close" in got.lower()
    assert time.monotonic() - start < BODY_TIMEOUT_S + 5


def test_still_healthy_and_nothing_leaked(server: Server):
    """After every case: a normal prediction, no internal error logged, no secret in the log, only t00 stored."""
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png()).decode()]}]}
    assert _infer(server, json=doc).status_code == 200
    log = server.log_tail(500_000)
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    assert SECRET not in log
    assert sorted(p.name for p in server.store.glob("*.safetensors")) == ["t00.safetensors"]
