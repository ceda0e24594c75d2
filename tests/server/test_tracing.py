"""Traces (``--tracing``, the otel extra): the spans of one request and of one mixed batch, in an in-memory
exporter; with two front processes and an engine process, the engine's batch span in the front's trace; off (the
default), no span and nothing of OpenTelemetry imported beyond what FastAPI imports itself."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install adaptformer-serve[otel])")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adaptformer_server import tracing
from adaptformer_server.app import create_app
from tests.support import ServerProcess, adapter_bytes, embedded_backbone, image_files, png, serving

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"admission", "decode", "queue wait", "forward", "encode"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def by_name(finished: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for s in finished:
        out.setdefault(s.name, []).append(s)
    return out


def rid_of(span: ReadableSpan) -> object:
    return (span.attributes or {}).get(tracing.REQUEST_ID)


async def test_one_request_is_one_tree_of_stage_spans_with_its_request_id(vit, tasks_store, make_settings, spans):
    app = create_app(make_settings(tracing=True), backbone=vit)
    async with serving(app) as client:
        spans.clear()  # readiness and warm-up are not requests
        r = await client.post("/predict?task=alpha", files=image_files(png(1)), headers={"X-Request-ID": "trace-1"})
        assert r.status_code == 200, r.text
    finished = spans.get_finished_spans()
    named = by_name(finished)
    assert set(named) == STAGES | {"POST /predict"}, set(named)
    assert all(len(v) == 1 for v in named.values())
    root = named["POST /predict"][0]
    assert root.parent is None and root.kind.name == "SERVER"
    status = {
        k: v for k, v in (root.attributes or {}).items() if k in ("http.response.status_code", "http.status_code")
    }
    assert set(status.values()) == {200}, root.attributes
    for name in STAGES:
        stage = named[name][0]
        assert stage.context.trace_id == root.context.trace_id, name
        assert stage.parent is not None and stage.parent.span_id == root.context.span_id, name
    for s in finished:
        assert rid_of(s) == "trace-1", s.name
    forward = named["forward"][0]
    attrs = forward.attributes or {}
    assert attrs["adaptformer.batch_size"] == 1
    assert [k.split("@")[0] for k in attrs["adaptformer.tasks"]] == ["alpha"]  # type: ignore[union-attr]
    assert list(attrs[tracing.REQUEST_IDS]) == ["trace-1"]  # type: ignore[arg-type]
    assert [link.context.span_id for link in forward.links] == [root.context.span_id]
    # stages in order: names checked, decoded, queued until the batch started, the batch, the answer encoded
    wait, decode, encode = named["queue wait"][0], named["decode"][0], named["encode"][0]
    assert named["admission"][0].end_time <= decode.start_time  # type: ignore[operator]
    assert decode.end_time <= wait.start_time <= wait.end_time <= forward.start_time  # type: ignore[operator]
    assert forward.end_time <= encode.start_time <= encode.end_time <= root.end_time  # type: ignore[operator]


async def test_a_kserve_request_has_the_same_stage_spans(vit, tasks_store, make_settings, spans):
    """``/v2/models/{task}/infer``: admission, decode, queue wait, forward and encode under its HTTP span."""
    app = create_app(make_settings(tracing=True), backbone=vit)
    async with serving(app) as client:
        spans.clear()
        size = vit.patch_embed.img_size[0]
        doc = {
            "inputs": [
                {"name": "input", "shape": [1, 3, size, size], "datatype": "FP32", "data": [0.0] * (3 * size * size)}
            ]
        }
        r = await client.post("/v2/models/alpha/infer", json=doc, headers={"X-Request-ID": "trace-v2"})
        assert r.status_code == 200, r.text
    named = by_name(spans.get_finished_spans())
    assert set(named) >= STAGES, set(named)
    root = next(s for s in spans.get_finished_spans() if s.parent is None)
    encode = named["encode"][0]
    assert encode.parent is not None and encode.parent.span_id == root.context.span_id
    assert rid_of(encode) == "trace-v2"
    assert named["forward"][0].end_time <= encode.start_time <= encode.end_time <= root.end_time  # type: ignore[operator]


async def test_a_mixed_batch_links_the_span_of_every_request_it_served(vit, tasks_store, make_settings, spans):
    # a batch of 2 goes once both samples are queued: the two requests are one forward pass
    app = create_app(make_settings(tracing=True, max_batch_size=2, max_wait_ms=5000), backbone=vit)
    async with serving(app) as client:
        spans.clear()

        async def call(task: str, rid: str) -> None:
            r = await client.post(f"/predict?task={task}", files=image_files(png(2)), headers={"X-Request-ID": rid})
            assert r.status_code == 200, r.text

        await asyncio.gather(call("alpha", "req-a"), call("beta", "req-b"))
    named = by_name(spans.get_finished_spans())
    roots = {rid_of(s): s for s in named["POST /predict"]}
    assert set(roots) == {"req-a", "req-b"}
    assert roots["req-a"].context.trace_id != roots["req-b"].context.trace_id  # two requests, two traces
    (forward,) = named["forward"]
    attrs = forward.attributes or {}
    assert attrs["adaptformer.batch_size"] == 2
    assert sorted(k.split("@")[0] for k in attrs["adaptformer.tasks"]) == ["alpha", "beta"]  # type: ignore[union-attr]
    assert sorted(attrs[tracing.REQUEST_IDS]) == ["req-a", "req-b"]  # type: ignore[arg-type]
    linked = {(link.context.trace_id, link.context.span_id): (link.attributes or {}) for link in forward.links}
    assert linked == {
        (root.context.trace_id, root.context.span_id): {tracing.REQUEST_ID: rid} for rid, root in roots.items()
    }
    assert forward.parent is not None and forward.parent.span_id in {r.context.span_id for r in roots.values()}
    waits = {rid_of(s): s for s in named["queue wait"]}
    assert set(waits) == {"req-a", "req-b"}
    for rid, wait in waits.items():  # each request's own wait, in its own trace
        assert wait.parent is not None and wait.parent.span_id == roots[rid].context.span_id
        assert wait.end_time <= forward.start_time  # type: ignore[operator]


async def test_a_failed_admission_is_an_error_span_of_its_request(vit, tasks_store, make_settings, spans):
    app = create_app(make_settings(tracing=True), backbone=vit)
    async with serving(app) as client:
        spans.clear()
        r = await client.post("/predict?task=nosuch", files=image_files(png(1)), headers={"X-Request-ID": "bad-1"})
        assert r.status_code == 404
    named = by_name(spans.get_finished_spans())
    assert set(named) == {"POST /predict", "admission"}  # nothing decoded, queued or run
    (admission,) = named["admission"]
    assert admission.status.status_code.name == "ERROR" and rid_of(admission) == "bad-1"


async def test_a_callers_traceparent_is_continued_and_its_unsampled_flag_kept(vit, tasks_store, make_settings, spans):
    app = create_app(make_settings(tracing=True), backbone=vit)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with serving(app) as client:
        spans.clear()
        for flags, rid in (("01", "sampled-1"), ("00", "unsampled-1")):
            headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-{flags}", "X-Request-ID": rid}
            r = await client.post("/predict?task=alpha", files=image_files(png(1)), headers=headers)
            assert r.status_code == 200, r.text
    finished = spans.get_finished_spans()
    assert {rid_of(s) for s in finished} == {"sampled-1"}  # the caller sampled the other out: no span of it
    assert {s.name for s in finished} == STAGES | {"POST /predict"}
    assert all(s.context.trace_id == int(trace_id, 16) for s in finished)  # in the caller's trace
    root = next(s for s in finished if s.name == "POST /predict")
    assert root.parent is not None and root.parent.span_id == 0x00F067AA0BA902B7 and root.parent.is_remote


def test_on_without_the_otel_extra_says_what_to_install(make_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # as if the SDK were not installed
    with pytest.raises(RuntimeError, match=r"otel extra .*pip install 'adaptformer-serve\[otel\]'"):
        create_app(make_settings(tracing=True))


OFF = textwrap.dedent(
    """
    import asyncio, json, sys
    import fastapi  # FastAPI imports the OpenTelemetry API itself
    baseline = {m for m in sys.modules if m.startswith("opentelemetry")}
    from pathlib import Path
    from adaptformer_server.app import create_app
    from adaptformer_server.settings import Settings
    from tests.support import adapter_bytes, image_files, png, serving, tiny_vit

    store = Path(sys.argv[1])
    vit = tiny_vit()
    (store / "alpha.safetensors").write_bytes(adapter_bytes(vit, "alpha", seed=1))

    async def one(tracing):
        app = create_app(Settings(store=store, seed_demo=False, max_wait_ms=2, tracing=tracing), backbone=vit)
        async with serving(app) as client:
            r = await client.post("/predict?task=alpha", files=image_files(png(1)))
            assert r.status_code == 200, r.text
        return app

    app = asyncio.run(one(False))
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry") and m not in baseline)
    off_tracer = app.state.inference.tracer
    # a process-wide tracer provider (an embedding app's): still no span from a server whose tracing is off
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(one(False))
    off_spans = len(exporter.get_finished_spans())
    asyncio.run(one(True))  # the same exporter receives the spans of a server whose tracing is on
    on_spans = sorted({s.name for s in exporter.get_finished_spans()})
    print(json.dumps({"loaded": loaded, "tracer": repr(off_tracer), "off_spans": off_spans, "on_spans": on_spans}))
    """
)


def test_off_imports_nothing_of_opentelemetry_and_makes_no_spans(tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-c", OFF, str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []  # no SDK, instrumentation or exporter module; not even more of the API
    assert result["tracer"] == "None"
    assert result["off_spans"] == 0
    assert set(result["on_spans"]) >= STAGES | {"POST /predict"}  # the exporter would have seen them


@pytest.mark.e2e
def test_with_two_fronts_the_engines_batch_span_continues_the_fronts_trace(tmp_path: Path):
    vit = embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir()
    (store / "cats.safetensors").write_bytes(adapter_bytes(vit, "cats", seed=1))
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo", "--threads", "1"]
    flags += ["--workers", "2", "--engine-process", "on", "--tracing", "--log-level", "warning"]
    env = {"OTEL_TRACES_EXPORTER": "console", "ADAPTFORMER_MAX_WAIT_MS": "2"}
    log = tmp_path / "server.log"
    with ServerProcess(flags, log=log, env=env) as server:
        import httpx

        rids = [f"tier-{i}" for i in range(4)]
        for rid in rids:  # new connections: either front may take each
            with httpx.Client(base_url=server.url, timeout=30) as client:
                r = client.post(
                    "/predict?task=cats",
                    files=[("image", ("x.png", png(1), "image/png"))],
                    headers={"X-Request-ID": rid},
                )
                assert r.status_code == 200, r.text
    # console export: one JSON object per span and line, from every process
    exported = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"name"')]
    for rid in rids:
        mine = [s for s in exported if s["attributes"].get(tracing.REQUEST_ID) == rid]
        names = {s["name"] for s in mine}
        assert names == STAGES | {"POST /predict"}, (rid, names)
        root = next(s for s in mine if s["name"] == "POST /predict")
        trace_id = root["context"]["trace_id"]
        assert all(s["context"]["trace_id"] == trace_id for s in mine), rid  # one trace across the processes
        pid = {s["name"]: s["resource"]["attributes"]["process.pid"] for s in mine}
        front_side, engine_side = STAGES - {"queue wait", "forward"} | {"POST /predict"}, {"queue wait", "forward"}
        assert len({pid[n] for n in front_side}) == 1 and len({pid[n] for n in engine_side}) == 1, pid
        assert pid["forward"] != pid["POST /predict"], pid  # the batch ran in the engine process
        for s in mine:
            if s["name"] in engine_side:  # children of the front's request span, across the wire
                assert s["parent_id"] == root["context"]["span_id"], (rid, s["name"])
