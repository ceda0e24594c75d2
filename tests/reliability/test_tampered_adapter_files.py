"""Tampered adapter files: each case answers 4xx at upload, and a file that reaches the store
by another way (a hand copy, another replica, an older server) never stops the server: start-up and the store
watcher move it to ``.quarantine/``, log it and count it.

The files are the shipped demo adapters with their ``__metadata__`` edited, served in-process by the embedded
backbone, as the probe that found these cases did. The last three tests fuzz the adapter-file reader and the upload
route with Hypothesis, then restart a server on what the uploads left in the store.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from starlette.testclient import TestClient

from adaptformer.adapter_file import task_from_bytes
from adaptformer.adapter_header import parse_header
from adaptformer.errors import AdapterFormatError, IncompatibleAdapterError
from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from tests.support import png, serving, upload_files

DEMO = Path(__file__).resolve().parents[2] / "adapters" / "adaptformer" / "demo"
QUARANTINE = ".quarantine"


# -- files ---------------------------------------------------------------------------------------------------
def demo(name: str) -> bytes:
    return (DEMO / f"{name}.safetensors").read_bytes()


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header (as JSON) and the tensor bytes of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_meta(data: bytes, **changes: str) -> bytes:
    """``data`` with metadata fields replaced (the tensors untouched)."""
    header, body = split(data)
    header["__metadata__"].update(changes)
    return join(header, body)


def with_json(data: bytes, key: str, edit: Callable[[Any], Any]) -> bytes:
    """``data`` with the JSON metadata field ``key`` passed through ``edit``."""
    header, _ = split(data)
    return with_meta(data, **{key: json.dumps(edit(json.loads(header["__metadata__"][key])))})


def with_tensors(data: bytes, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    header, _ = split(data)
    tensors = st_load(data)
    edit(tensors)
    return st_save(tensors, metadata=header["__metadata__"])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


IMAGE = {"files": [("image", ("a.png", png(), "image/png"))]}


# -- a server on the embedded backbone, in-process -----------------------------------------------------------
def make_app(store: Path, **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {"store": store, "seed_demo": False, "max_wait_ms": 2, "store_poll_ms": 0, "threads": 1}
    values.update(overrides)
    return create_app(Settings(**values))


def seed(store: Path, **tasks: bytes) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    for name, data in tasks.items():
        (store / f"{name}.safetensors").write_bytes(data)
    return store


def quarantined(app: FastAPI) -> float:
    return app.state.runtime.metrics.quarantined._value.get()


async def tasks_of(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/adapters")
    assert r.status_code == 200, r.text
    return [a["task"] for a in r.json()["adapters"]]


# Each hostile file, by the item of issue 23 it comes from. Before the fixes, all but two were accepted (201) or
# answered 500; "2-surrogate-bytes-in-header" and "11-bool-bottleneck" were refused already (kept as guards).
HOSTILE: dict[str, Callable[[], bytes]] = {
    "1-linear-layers-string": lambda: with_meta(demo("fashion"), layers='"5"'),
    "1-linear-layers-number": lambda: with_meta(demo("fashion"), layers="5"),
    "2-lone-surrogate-label": lambda: with_json(demo("fashion"), "labels", lambda v: ["\ud800", *v[1:]]),
    "2-surrogate-bytes-in-header": lambda: _surrogate_bytes(),
    "2-huge-metrics": lambda: with_meta(demo("fashion"), metrics=json.dumps({"notes": "x" * 7_000_000})),
    "2-long-label": lambda: with_json(demo("fashion"), "labels", lambda v: ["y" * 100_000, *v[1:]]),
    "2-many-metadata-keys": lambda: with_meta(demo("fashion"), **{f"k{i}": "v" for i in range(5000)}),
    "9-nested-metrics": lambda: with_meta(demo("fashion"), metrics=nested(100_000)),
    "9-nested-input": lambda: with_meta(demo("fashion"), input=nested(100_000)),
    "9-nested-metrics-shallow": lambda: with_meta(demo("fashion"), metrics=json.dumps({"a": json.loads(nested(500))})),
    "11-bool-layers": lambda: _true_block(),
    "11-bool-config-layers": lambda: with_json(demo("digits"), "config", lambda c: {**c, "layers": [True, 1]}),
    "11-bool-bottleneck": lambda: with_json(demo("digits"), "config", lambda c: {**c, "bottleneck": True}),
    "9-nested-header": lambda: _nested_header(),
}


def _surrogate_bytes() -> bytes:
    """A label that is a UTF-8-encoded lone surrogate (ED A0 80) in the raw header: not UTF-8 text."""
    header, body = split(demo("fashion"))
    labels = json.loads(header["__metadata__"]["labels"])
    header["__metadata__"]["labels"] = json.dumps(["SURROGATE", *labels[1:]])
    raw = json.dumps(header).encode().replace(b"SURROGATE", b"\xed\xa0\x80")
    return join(raw, body)


def _true_block() -> bytes:
    """``layers: [true, 1, ...]`` with block 0's tensors renamed to match (``adapters.True.*``)."""
    header, body = split(with_json(demo("digits"), "layers", lambda v: [True, *v[1:]]))
    renamed = {k.replace("adapters.0.", "adapters.True.", 1): v for k, v in header.items()}
    return join(renamed, body)


def _nested_header() -> bytes:
    header, body = split(demo("fashion"))
    raw = json.dumps(header).encode()
    return join(raw[:-1] + b', "extra": ' + nested(100_000).encode() + b"}", body)


# -- items 1, 2, 9, 11: refused at upload with a 4xx, never stored -------------------------------------------
@pytest.fixture(scope="module")
def hostile_files() -> dict[str, bytes]:
    return {case: make() for case, make in HOSTILE.items()}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """One server for many cases (its event loop in a thread, so Hypothesis can call it synchronously too)."""
    store = seed(tmp_path_factory.mktemp("live") / "store", digits=demo("digits"))
    app = make_app(store)
    with TestClient(app) as client:
        client.portal.call(app.state.runtime.wait_ready, 60)
        yield client, store


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_answers_4xx_at_upload_and_is_never_stored(case, hostile_files, live):
    client, store = live
    r = client.post("/adapters", **upload_files(hostile_files[case], task="hostile"))
    assert r.status_code in (409, 413, 422), (r.status_code, r.text[:300])
    assert not (store / "hostile.safetensors").exists()
    # the server is unharmed: listing, a prediction, an upload (which polls the store first), an unknown delete
    assert [a["task"] for a in client.get("/adapters").json()["adapters"]] == ["digits"]
    assert client.post("/predict?task=digits", **IMAGE).status_code == 200
    assert client.post("/adapters", **upload_files(demo("fashion"), task="ok")).status_code == 201
    assert client.delete("/adapters/nothing").status_code == 404
    assert client.delete("/adapters/ok").status_code == 200


# -- items 1, 2, 9, 11: a hostile file in the store never stops start-up ---------------------------------------
async def test_hostile_files_in_the_store_are_quarantined_at_start(tmp_path, hostile_files, caplog):
    caplog.set_level(logging.WARNING)
    names = {case: f"bad{i:02d}" for i, case in enumerate(hostile_files)}
    store = seed(tmp_path / "store", digits=demo("digits"), **{names[c]: d for c, d in hostile_files.items()})
    app = make_app(store)
    async with serving(app) as client:
        assert await tasks_of(client) == ["digits"]
        assert (await client.post("/predict?task=digits", **IMAGE)).status_code == 200
        assert (await client.post("/predict?task=*", **IMAGE)).status_code == 200
        assert quarantined(app) == len(hostile_files)
        metrics = (await client.get("/metrics")).text
        assert f"adaptformer_quarantined_files_total {float(len(hostile_files))}" in metrics
    for case, name in names.items():
        assert not (store / f"{name}.safetensors").exists(), case
        assert list((store / QUARANTINE).glob(f"{name}.*")), case
        assert name in caplog.text and "quarantine" in caplog.text, case
    # a restart finds nothing left to quarantine
    app = make_app(store)
    async with serving(app) as client:
        assert await tasks_of(client) == ["digits"]
        assert quarantined(app) == 0


# -- item 1: the watcher runs the same check, and quarantines too --------------------------------------------
async def test_a_hostile_file_found_by_the_watcher_is_quarantined(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"))
    app = make_app(store)
    async with serving(app) as client:
        adapters = app.state.adapters
        (store / "linear5.safetensors").write_bytes(HOSTILE["1-linear-layers-number"]())
        (store / "surrogate.safetensors").write_bytes(HOSTILE["2-lone-surrogate-label"]())
        await adapters.sync_store()  # one poll of the watcher
        assert await tasks_of(client) == ["digits"]
        assert quarantined(app) == 2
        assert sorted(p.name.split(".")[0] for p in (store / QUARANTINE).glob("*.safetensors")) == [
            "linear5",
            "surrogate",
        ]
        # later uploads, deletes and polls still work
        assert (await client.post("/adapters", **upload_files(demo("fashion")))).status_code == 201
        assert (await client.delete("/adapters/unknown")).status_code == 404
        assert await adapters.sync_store() == 0
        assert await tasks_of(client) == ["digits", "fashion"]


def test_the_store_refuses_what_upload_refuses(tmp_path, hostile_files):
    """One reader for upload, start-up and watcher: the store's header check refuses each hostile file alike."""
    from adaptformer_server.repository.layout import AdapterStore

    store = AdapterStore(tmp_path / "store")
    for case, data in hostile_files.items():
        (store.root / "x.safetensors").write_bytes(data)
        with pytest.raises(AdapterFormatError):
            store.examine("x")
        with pytest.raises(AdapterFormatError):
            parse_header(data, case)


def test_only_files_broken_for_good_are_quarantined(tmp_path):
    """A file still being copied in, one a newer server wrote, and one replaced since it was examined stay put."""
    from adaptformer_server.repository.layout import AdapterStore
    from adaptformer_server.repository.record import Stamp

    moved: list[str] = []
    store = AdapterStore(tmp_path / "store", on_quarantine=moved.append)
    root = store.root
    (root / "cut.safetensors").write_bytes(demo("digits")[:5000])
    (root / "newer.safetensors").write_bytes(with_meta(demo("fashion"), format_version="9"))
    (root / "bad.safetensors").write_bytes(HOSTILE["1-linear-layers-number"]())
    (root / "good.safetensors").write_bytes(demo("fashion"))
    assert [f.task for f in store.scan()] == ["good"]
    assert moved == ["bad"]
    assert sorted(p.name for p in root.glob("*.safetensors")) == [
        "cut.safetensors",
        "good.safetensors",
        "newer.safetensors",
    ]
    assert len(list((root / QUARANTINE).glob("bad.*.reason"))) == 1
    stamp = Stamp.of((root / "good.safetensors").stat())
    store.write("good", demo("digits"))  # replaced (a new inode) after it was looked at
    assert not store.quarantine("good", stamp, "examined before the replace")
    assert (root / "good.safetensors").exists() and moved == ["bad"]


# -- item 2: bounds ------------------------------------------------------------------------------------------
def test_a_100000_class_head_is_refused_from_its_header():
    header, _ = split(demo("fashion"))
    header["__metadata__"]["labels"] = json.dumps([f"c{i}" for i in range(100_000)])
    header["__metadata__"]["num_classes"] = "100000"
    header["head.weight"] = {"dtype": "F16", "shape": [100_000, 128], "data_offsets": [0, 100_000 * 128 * 2]}
    header["head.bias"] = {"dtype": "F16", "shape": [100_000], "data_offsets": [100_000 * 128 * 2, 100_000 * 129 * 2]}
    with pytest.raises(AdapterFormatError, match="classes"):
        parse_header(join(header, b""), "big")


# -- item 4 (second half): a clip task with more frames than the server takes ---------------------------------
async def test_a_clip_adapter_above_max_frames_is_refused(tmp_path):
    store = seed(tmp_path / "store")
    app = make_app(store, max_frames=16)
    many = with_json(demo("motion"), "input", lambda s: {**s, "frames": 256})
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(many))
        assert r.status_code in (409, 422), r.text
        assert "max_frames" in r.json()["error"]["message"] or "frames" in r.json()["error"]["message"]
        assert not (store / "motion.safetensors").exists()
        assert (await client.post("/adapters", **upload_files(demo("motion")))).status_code == 201  # 8 frames fit


# -- item 6: weights finite in the serving dtype; task=* takes the tasks it resolved ---------------------------
def _overflowing(data: bytes) -> bytes:
    def edit(t: dict[str, torch.Tensor]) -> None:
        w = t["head.weight"].double()
        w[0, 0] = 1e300  # finite in float64, inf in float32
        t["head.weight"] = w

    return with_tensors(data, edit)


async def test_weights_that_overflow_the_serving_dtype_are_refused(tmp_path):
    store = seed(tmp_path / "store")
    app = make_app(store)
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(_overflowing(demo("fashion"))))
        assert r.status_code in (409, 422), r.text
        assert not (store / "fashion.safetensors").exists()


async def test_weights_that_overflow_float16_are_refused_by_a_float16_server(tmp_path):
    def big(t: dict[str, torch.Tensor]) -> None:
        t["head.weight"][0, 0] = 1e5  # finite in float32, not in float16

    app = make_app(seed(tmp_path / "store"), dtype="float16", device="cpu")
    async with serving(app) as client:
        r = await client.post("/adapters", **upload_files(with_tensors(demo("fashion"), big)))
        assert r.status_code == 409 and r.json()["error"]["check"] == "dtype", r.text
        assert "float16" in r.json()["error"]["message"]
        assert (await client.post("/adapters", **upload_files(demo("fashion")))).status_code == 201


async def test_star_skips_a_stored_task_it_cannot_load(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"), fashion=demo("fashion"), big=_overflowing(demo("fashion")))
    app = make_app(store)
    async with serving(app) as client:
        assert (await client.post("/predict?task=big", **IMAGE)).status_code == 422  # asked by name: its error
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]


async def test_star_leaves_out_a_task_whose_scores_overflow(tmp_path):
    def huge(t: dict[str, torch.Tensor]) -> None:
        t["head.weight"] = torch.full_like(t["head.weight"], 3e38)  # finite, but the logits are not

    app = make_app(seed(tmp_path / "store", digits=demo("digits"), fashion=demo("fashion")))
    async with serving(app) as client:
        assert (
            await client.post("/adapters", **upload_files(with_tensors(demo("fashion"), huge), task="huge"))
        ).status_code == 201
        assert (await client.post("/predict?task=huge", **IMAGE)).status_code == 422  # asked by name: its error
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]
        r = await client.post("/predict?task=digits&task=huge", **IMAGE)  # named outright: the request fails
        assert r.status_code == 422


async def test_star_still_runs_its_tasks_in_one_forward_pass(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"), emoji=demo("emoji"), fashion=demo("fashion"))
    app = make_app(store, max_batch_size=3, max_wait_ms=30_000)  # a batch short of 3 samples would wait 30 s
    async with serving(app) as client:
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert list(app.state.inference.batcher.recent_batch_sizes) == [3]


async def test_star_keeps_its_tasks_when_one_is_deleted_meanwhile(tmp_path, monkeypatch):
    store = seed(tmp_path / "store", digits=demo("digits"), emoji=demo("emoji"), fashion=demo("fashion"))
    app = make_app(store)
    from adaptformer_server.routes import predict as predict_route

    read = predict_route.read_predict_body

    async def read_then_delete(request, settings):
        body = await read(request, settings)
        await app.state.adapters.delete("emoji")  # while the request runs: after `*` was expanded
        return body

    monkeypatch.setattr(predict_route, "read_predict_body", read_then_delete)
    async with serving(app) as client:
        r = await client.post("/predict?task=*", **IMAGE)
        assert r.status_code == 200, r.text
        assert [x["task"] for x in r.json()["results"]] == ["digits", "fashion"]


# -- Hypothesis: the reader never raises anything but its typed errors ------------------------------------------
TYPED = (AdapterFormatError, IncompatibleAdapterError)
UPLOADS = itertools.count()
BASES = {"fashion": demo("fashion"), "digits": demo("digits")}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
META_KEYS = ["format", "format_version", "task", "method", "labels", "input", "backbone", "backbone_fingerprint"]
meta_keys = st.sampled_from([*META_KEYS, "metrics", "layers", "config", "num_classes", "backbone_params", "created"])
meta_values = st.one_of(
    st.sampled_from([nested(2000), '"\\ud800"', '["\\udfff"]', "[true, 1]", '"5"', "5", "[-1]", "[99]", "1e999"]),
    json_values.map(json.dumps),
    st.text(max_size=40),
)
tensor_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"]) | json_values,
        "shape": st.lists(st.integers(-2, 2**40) | st.booleans(), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-5, 2**62), min_size=0, max_size=3) | json_values,
    }
)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A demo file with random edits to its metadata and tensor entries, and now and then to its declared header
    length or its bytes (most examples keep a well-formed header, so that the checks behind it are reached)."""
    data = BASES[draw(st.sampled_from(sorted(BASES)))]
    header, body = split(data)
    meta = header["__metadata__"]
    for key in draw(st.lists(meta_keys, min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 4:  # Hypothesis prefers small numbers: 0..3 (the likely case) edits
            meta.pop(key, None)
        else:
            meta[key] = draw(meta_values)
    names = sorted(k for k in header if k != "__metadata__")
    for name in draw(st.lists(st.sampled_from(names), max_size=2)):
        header[name] = draw(tensor_entries | json_values)
    if draw(st.integers(0, 19)) == 19:
        header["__metadata__"] = draw(json_values)
    raw = json.dumps(header).encode()
    out = bytearray(join(raw, body))
    kind = draw(st.integers(0, 9))  # 0..5: the bytes as written
    if kind == 6:  # a random declared header length
        out[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    elif kind == 7:  # flipped bytes in the header
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(8, 8 + len(raw) - 1))
            out[i] = draw(st.integers(0, 255))
    elif kind == 8:  # cut anywhere
        del out[draw(st.integers(0, len(out))) :]
    elif kind == 9:  # a NaN in the tensors
        i = draw(st.integers(8 + len(raw), len(out) - 1))
        out[i : i + 4] = b"\xff\xff\xff\x7f"
    return bytes(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_reader_fuzz_raises_only_typed_errors(data: bytes):
    for read in (parse_header, task_from_bytes):
        with suppress(*TYPED):  # anything else fails the test
            read(data, "fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_upload_fuzz_never_500_and_the_store_holds_only_what_start_up_accepts(live, data):
    client, _ = live
    r = client.post("/adapters", **upload_files(data, task=f"fuzz{next(UPLOADS)}"))
    assert r.status_code in (201, 409, 413, 415, 422), (r.status_code, r.text[:300])


async def test_after_the_upload_fuzz_a_restart_accepts_every_stored_file(live, tmp_path):
    _, store = live
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    stored = sorted(p.name[: -len(".safetensors")] for p in copy.glob("*.safetensors"))
    app = make_app(copy)
    async with serving(app) as client:
        assert await tasks_of(client) == stored
        assert quarantined(app) == 0
        for task in stored:  # and each one pages in (an input that does not suit the task is a 400, not a 422)
            r = await client.post(f"/predict?task={task}", **IMAGE)
            # Finite weights whose scores overflow on this input (the fuzz finds some) paged in and ran: the 422
            # that names the overflow, never a failure to load.
            overflow = r.status_code == 422 and "produced non-finite scores" in r.json()["error"]["message"]
            assert r.status_code in (200, 400) or overflow, (task, r.text)
