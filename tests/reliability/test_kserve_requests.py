"""KServe v2 inference requests that probing a running server found mishandled, one test per case: a shape of
booleans answered 500 (a bool passed the integer check), and requests whose declared size already said 413 cost
what they declared first: a 29 MiB JSON body of 15 M values for a 2,352-value shape held the event loop (and
/healthz) while it was parsed, and a binary BYTES input of shape [5,000,000] was unpacked before its 413. They run
against one server process of their own, with the default limits (32 MiB bodies, 64 inputs a request).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from benchmarks.reliability import Kit, Server
from tests.support import png

pytestmark = pytest.mark.e2e

SIZE = 28  # the input side of the embedded architecture's tasks
VALUES = 3 * SIZE * SIZE
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(kit: Kit) -> Iterator[Server]:
    store = kit.workdir / "store-kserve-requests"
    store.mkdir(parents=True, exist_ok=True)
    (store / "t00.safetensors").write_bytes(kit.tasks["t00"])
    with Server(kit.weights, store, kit.workdir / "server-kserve-requests.log") as s:
        yield s


def _infer(server: Server, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/t00/infer", timeout=60, **kw)


def _healthy(server: Server) -> None:
    assert server.alive()
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png()).decode()]}]}
    r = _infer(server, json=doc)
    assert r.status_code == 200, r.text


# -- A shape is a list of non-negative integers, strictly --------------------------------------------------------------
@pytest.mark.parametrize(
    ("datatype", "shape"),
    [
        ("FP32", [True, 3, SIZE, SIZE]),
        ("FP32", [1, 3, SIZE, False]),
        ("BYTES", [True]),
        ("FP32", [1.0, 3, SIZE, SIZE]),
        ("FP32", [-1, 3, SIZE, SIZE]),
        ("FP32", [10**30, 3, SIZE, SIZE]),
        ("BYTES", [2**40]),
        ("FP32", [[1], 3, SIZE, SIZE]),
        ("FP32", "1,3,28,28"),
        ("FP32", []),
    ],
    ids=["bool", "bool-last", "bytes-bool", "float", "negative", "huge", "bytes-huge", "nested", "string", "empty"],
)
def test_a_shape_that_is_not_non_negative_integers_is_a_400(datatype: str, shape: object, server: Server):
    data = [0.5] * VALUES if datatype == "FP32" else [base64.b64encode(png()).decode()]
    r = _infer(server, json={"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]})
    assert r.status_code == 400, r.text
    assert "`shape` must be a non-empty list of non-negative integers" in r.json()["error"]
    _healthy(server)


# -- What a request declares is refused before it is spent -------------------------------------------------------------
def _zeros_body(values: int) -> bytes:
    head = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 28, 28], "data": ['
    return head + b",".join([b"0"] * values) + b"]}]}"


def test_a_json_body_of_too_many_values_is_refused_before_it_is_parsed(server: Server):
    """Three 29 MiB bodies of 15 M values each for a 2,352-value shape (under the body limit) at once: each a 413
    named for its values, /healthz answered within 0.6 s all along (0.9 to 1.1 s before, on a quiet machine; about 0.1 s
    now, 0.3 s on a loaded CI host), and the server no larger by the parse."""
    body = _zeros_body(15_000_000)
    assert 28 * 2**20 < len(body) < 32 * 2**20
    before = server.rss_mb()
    worst, stop = [0.0], threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                start = time.monotonic()
                assert client.get("/healthz").status_code == 200
                worst[0] = max(worst[0], time.monotonic() - start)
                time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            sent = pool.map(
                lambda _: _infer(server, content=body, headers={"Content-Type": "application/json"}), range(3)
            )
            answers = list(sent)
    finally:
        stop.set()
        watcher.join()
    for r in answers:
        assert r.status_code == 413, r.text
        assert "JSON values" in r.json()["error"] and "t00" in r.json()["error"]
    assert worst[0] < 0.6, f"/healthz took {worst[0]:.2f} s while the bodies were read"
    assert server.rss_mb() - before < 300  # parsed, each added some 300 MiB
    _healthy(server)


def test_a_json_body_within_the_limits_is_still_parsed(server: Server):
    """64 preprocessed inputs (150,528 values, 1.5 MB of JSON: parsed on a worker thread) are answered."""
    data = ", ".join(["0.123456"] * (64 * VALUES))
    body = f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [64, 3, 28, 28], "data": [{data}]}}]}}'
    r = _infer(server, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"][0] == 64


def test_a_binary_bytes_shape_over_the_limit_is_refused_before_its_data_is_read(server: Server):
    n = 5_000_000
    blob = b"\x00\x00\x00\x00" * n  # n empty elements
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [n], "parameters": {"binary_data_size": len(blob)}}
            ]
        }
    ).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    start = time.monotonic()
    r = _infer(server, content=header + blob, headers=headers)
    took = time.monotonic() - start
    assert r.status_code == 413, r.text
    assert "more than 64 images" in r.json()["error"]
    assert took < 1.5, f"refused after {took:.2f} s"  # 2.9 s before (quiet machine), sending included
    _healthy(server)


def test_json_bytes_elements_beyond_the_limits_are_refused_before_parsing(server: Server):
    body = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2_000_000], "data": [""] * 2_000_000}]}
    )
    start = time.monotonic()
    r = _infer(server, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "JSON values" in r.json()["error"]
    # Sending the 14 MB included: 1.3 s on a loaded CI host in one process; through --workers 2 the body also
    # crosses from the front to the engine process (1.51 and 1.52 s on two loaded CI runs). The refusal before
    # parsing is what the "JSON values" message above shows; this bound only keeps it from growing.
    assert time.monotonic() - start < 2.5


def test_a_binary_data_size_beyond_the_body_is_a_400(server: Server):
    header = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 28, 28],
                     "parameters": {"binary_data_size": 4 * VALUES}}]}
    ).encode()  # fmt: skip
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    r = _infer(server, content=header + b"\x00" * 100, headers=headers)
    assert r.status_code == 400, r.text
    assert "binary_data_size" in r.json()["error"]


def test_no_internal_error_logged(server: Server):
    assert "internal error" not in server.log_tail(500_000)
