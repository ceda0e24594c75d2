"""X-Request-ID: taken from the request when sane or made, echoed in every response and carried by every log line
of the request, in text and in JSON logs (in process, and from a real `adaptformer serve --log-format json`)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from adaptformer_server.app import create_app
from adaptformer_server.observability import JsonFormatter, RequestIdFilter, TextFormatter
from tests.support import ServerProcess, adapter_bytes, embedded_backbone, image_files, png, serving, upload_files

HEX_ID = re.compile(r"[0-9a-f]{32}")


async def test_a_sane_request_id_is_echoed_on_every_answer(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        for rid in ("checkout-42", "0b6f1c7e-0d2a-4a53-9a57-3f1f4a6f0e11", "a" * 128, "Root=1-5e1b;Parent=53995c"):
            r = await client.post("/predict?task=alpha", files=image_files(png(1)), headers={"X-Request-ID": rid})
            assert r.status_code == 200 and r.headers["x-request-id"] == rid
        # errors answered by the routes, by the error handlers and by the Host check carry it too
        headers = {"X-Request-ID": "err-1"}
        assert (await client.post("/predict?task=nosuch", files=image_files(png(1)), headers=headers)).headers[
            "x-request-id"
        ] == "err-1"
        assert (await client.get("/no/such/route", headers=headers)).headers["x-request-id"] == "err-1"
        bad_host = await client.get("/healthz", headers={**headers, "Host": "evil.example"})
        assert bad_host.status_code == 400 and bad_host.headers["x-request-id"] == "err-1"


async def test_a_missing_or_insane_request_id_is_replaced_by_a_new_one(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        made = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(2)]
        assert all(HEX_ID.fullmatch(m) for m in made) and made[0] != made[1]
        for bad in ("a" * 129, "two words", "tab\there", "", "caf\xe9", '{"x":1}\x7f'):
            r = await client.get("/healthz", headers=[(b"x-request-id", bad.encode("latin-1"))])
            assert HEX_ID.fullmatch(r.headers["x-request-id"]), bad


@contextmanager
def captured(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """The server's log lines, through ``formatter`` and the request-id filter, as configure_logging sets them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    logger = logging.getLogger("adaptformer_server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_log_lines_of_a_request_carry_its_id(vit, tasks_store, make_settings):
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        with captured(JsonFormatter()) as json_lines, captured(TextFormatter()) as text_lines:
            up = await client.post(
                "/adapters", headers={"X-Request-ID": "upload-7"}, **upload_files(adapter_bytes(vit, "cars"))
            )
            assert up.status_code == 201, up.text
            gone = await client.delete("/adapters/cars")
            assert gone.status_code == 200
    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    stored = [r for r in records if "adapter cars version" in r["message"] and "stored" in r["message"]]
    assert len(stored) == 1 and stored[0]["request_id"] == "upload-7"
    assert {"time", "level", "logger", "message"} <= stored[0].keys() and stored[0]["level"] == "INFO"
    deleted = [r for r in records if "deleted" in r["message"]]
    assert len(deleted) == 1 and deleted[0]["request_id"] == gone.headers["x-request-id"] != "upload-7"
    text = [line for line in text_lines.getvalue().splitlines() if "adapter cars version" in line]
    assert len(text) == 2 and "adaptformer_server [upload-7]: adapter cars version" in text[0]
    outside = logging.LogRecord("adaptformer_server", logging.INFO, __file__, 1, "outside", None, None)
    assert "request_id" not in json.loads(JsonFormatter().format(outside))
    assert "[-]: outside" in TextFormatter().format(outside)


async def test_in_a_ray_replica_the_proxy_sets_the_header(vit, tasks_store, make_settings, monkeypatch):
    """Ray Serve's proxy passes its id in the request and appends X-Request-ID to the answer: the app takes the id
    for its log lines but adds no second header."""
    fake_serve = types.ModuleType("ray.serve")
    fake_serve.get_replica_context = lambda: object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray.serve", fake_serve)
    app = create_app(make_settings(), backbone=vit)
    async with serving(app) as client:
        with captured(JsonFormatter()) as json_lines:
            up = await client.post(
                "/adapters", headers={"X-Request-ID": "ray-1"}, **upload_files(adapter_bytes(vit, "cars"))
            )
    assert up.status_code == 201 and "x-request-id" not in up.headers
    stored = [json.loads(line) for line in json_lines.getvalue().splitlines() if "stored" in line]
    assert [line["request_id"] for line in stored] == ["ray-1"]


@pytest.mark.e2e
def test_serve_json_logs_every_line_parses_and_carries_the_request_id(tmp_path: Path):
    """A real server: every line it writes is JSON, and uvicorn's access line and the app's lines of one request
    name that request's id."""
    backbone = embedded_backbone(tmp_path / "backbone.safetensors")
    args = ["--weights", tmp_path / "backbone.safetensors", "--threads", "1", "--store", tmp_path / "store"]
    server = ServerProcess([*args, "--no-seed-demo", "--log-format", "json"], log=tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            data = adapter_bytes(backbone, "fashion", seed=1)
            up = client.post("/adapters", headers={"X-Request-ID": "up-1"}, **upload_files(data))
            assert up.status_code == 201, up.text
            r = client.post("/predict?task=fashion", headers={"X-Request-ID": "pr-2"}, files=image_files(png(1)))
            assert r.status_code == 200 and r.headers["x-request-id"] == "pr-2"
    finally:
        returncode = server.stop(timeout=30)
    output = server.log.read_text()  # stdout and stderr
    assert returncode == 0, output[-2000:]
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # each line parses
    assert any(
        line["logger"] == "uvicorn.error" and "Application startup complete" in line["message"] for line in lines
    )
    of = {rid: [line for line in lines if line.get("request_id") == rid] for rid in ("up-1", "pr-2")}
    assert {line["logger"] for line in of["up-1"]} == {"adaptformer_server", "uvicorn.access"}, of["up-1"]
    assert any("adapter fashion version" in line["message"] for line in of["up-1"])
    assert [line["logger"] for line in of["pr-2"]] == ["uvicorn.access"]
    assert "POST /predict?task=fashion" in of["pr-2"][0]["message"]
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert len(access) >= 3 and all("request_id" in line for line in access)  # /readyz polls too
