"""Tampered adapter files at upload, at start-up and under the store watcher: each answers 4xx at upload, and a file
that reaches the store by another way (a hand copy, another replica, an older server) never stops the server: it is
moved to ``.quarantine/``, logged and counted. The files are the shipped demo adapters with their ``__metadata__``
edited, served in-process by the embedded backbone, as the probe that found these cases did.
"""

from __future__ import annotations

import json
import logging

import pytest

from adaptformer.adapter_header import parse_header
from adaptformer.errors import AdapterFormatError
from tests.reliability.tampered.files import (
    HOSTILE,
    IMAGE,
    QUARANTINE,
    demo,
    join,
    make_app,
    quarantined,
    seed,
    split,
    tasks_of,
    with_json,
    with_meta,
)
from tests.support import serving, upload_files


# -- refused at upload with a 4xx, never stored ------------------------------------------------------------
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


# -- a hostile file in the store never stops start-up ---------------------------------------
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


# -- the watcher runs the same check, and quarantines too --------------------------------------------
async def test_a_hostile_file_found_by_the_watcher_is_quarantined(tmp_path):
    store = seed(tmp_path / "store", digits=demo("digits"))
    app = make_app(store)
    async with serving(app) as client:
        adapters = app.state.adapters
        (store / "linear5.safetensors").write_bytes(HOSTILE["linear-layers-number"]())
        (store / "surrogate.safetensors").write_bytes(HOSTILE["lone-surrogate-label"]())
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
    (root / "bad.safetensors").write_bytes(HOSTILE["linear-layers-number"]())
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


# -- bounds ------------------------------------------------------------------------------------------
def test_a_100000_class_head_is_refused_from_its_header():
    header, _ = split(demo("fashion"))
    header["__metadata__"]["labels"] = json.dumps([f"c{i}" for i in range(100_000)])
    header["__metadata__"]["num_classes"] = "100000"
    header["head.weight"] = {"dtype": "F16", "shape": [100_000, 128], "data_offsets": [0, 100_000 * 128 * 2]}
    header["head.bias"] = {"dtype": "F16", "shape": [100_000], "data_offsets": [100_000 * 128 * 2, 100_000 * 129 * 2]}
    with pytest.raises(AdapterFormatError, match="classes"):
        parse_header(join(header, b""), "big")


# -- a clip task with more frames than the server takes ---------------------------------
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
