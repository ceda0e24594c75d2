"""Training jobs as hostile probing of a running server found them mishandled, one test per class of case:

1. a user's mistake in the examples answered 500 (names the file system refuses: a path both a file and a folder,
   name lengths counted in characters where the file system counts bytes, paths past PATH_MAX, deep recursion);
2. jobs accepted (202) that could only fail at registration, after training (labels and descriptions the adapter
   upload check refuses, the description the job made itself, knobs the library refuses);
3. examples checked as one layout and trained as another (``train/`` beside ``test/``);
4. a cancel answered 200 while the job went on to train and register.

Each runs an app in-process with a tiny backbone; the jobs that train run one epoch on a few tiny images.
"""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaptformer_server.app import create_app
from adaptformer_server.jobs import manager as manager_module
from adaptformer_server.settings import Settings
from tests.server.jobs_support import zip_of
from tests.support import async_wait_until, gif, png, serving

ADMIN = "jobs-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ENDED = ("succeeded", "failed", "cancelled")


@pytest.fixture
async def server(vit, tmp_path, monkeypatch) -> AsyncIterator[httpx.AsyncClient]:
    for key in list(os.environ):
        if key.startswith("ADAPTFORMER_"):
            monkeypatch.delenv(key)
    (tmp_path / "store").mkdir()
    settings = Settings(
        store=tmp_path / "store", jobs_dir=tmp_path / "jobs", admin_key=ADMIN, max_wait_ms=2, seed_demo=False
    )
    async with serving(create_app(settings, backbone=vit)) as client:
        yield client


def _image(seed: int) -> bytes:
    return png(seed, size=12)


def _classes(*names: str, per_class: int = 3, prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{name}/{i}.png": _image(100 * k + i) for k, name in enumerate(names) for i in range(per_class)}


def _train(client: httpx.AsyncClient, data: bytes, task: str = "t", **params: object):
    files = {"examples": ("x.zip", data, "application/zip")}
    return client.post(f"/tasks/{task}/train", params=params, files=files, headers=AUTH)


async def _job(client: httpx.AsyncClient, job_id: str) -> dict:
    r = await client.get(f"/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


async def _ended(client: httpx.AsyncClient, job_id: str) -> dict:
    async def ended() -> dict | None:
        job = await _job(client, job_id)
        return job if job["status"] in ENDED else None

    return await async_wait_until(ended, f"job {job_id} to end", timeout=120, interval=0.1)


async def _refused(client: httpx.AsyncClient, tmp_path: Path, r: httpx.Response, words: str) -> None:
    """A 400 that says ``words``, and no job left queued or on disk."""
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"], r.json()
    assert (await client.get("/jobs", headers=AUTH)).json()["jobs"] == []
    assert [p.name for p in (tmp_path / "jobs").iterdir() if p.name.startswith("j-")] == []


# -- 1. no exception of unpacking or path handling answers 500 ---------------------------------------------------
E200 = "é" * 200  # 200 characters, 400 bytes: past the file system's 255 bytes per name
UNPACKING = {
    "a file, then a folder of its name": ({"a/x.png": _image(1), "a/x.png/y.png": _image(2)}, "not both"),
    "a folder, then a file of its name": ({"a/x.png/y.png": _image(2), "a/x.png": _image(1)}, "not both"),
    "a class folder of 400 bytes": ({f"{E200}/0.png": _image(1), f"{E200}/1.png": _image(2)}, "400 bytes"),
    "an image name of 400 bytes": ({f"a/{E200}.png": _image(1)}, "bytes"),
    "a name of 64 four-byte emoji": ({"a/" + "😀" * 64 + ".png": _image(1)}, "260 bytes"),
    "a name past PATH_MAX": ({"a/" + "x" * 4100 + ".png": _image(1)}, "bytes"),
    "a path past PATH_MAX": ({"a/" + ("d" * 250 + "/") * 17 + "x.png": _image(1)}, "folders deep"),
    "1500 folders deep": ({"a/" * 1500 + "x.png": _image(1)}, "folders deep"),
    "one folder too deep": ({"w/train/a/clip/more/0.png": _image(1)}, "folders deep"),
}


@pytest.mark.parametrize("case", list(UNPACKING))
async def test_names_the_file_system_refuses_are_400(server, tmp_path, case):
    members, words = UNPACKING[case]
    r = await _train(server, zip_of({**_classes("b", "c"), **members}))
    await _refused(server, tmp_path, r, words)


async def test_a_corrupt_member_is_400(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in _classes("a", "b").items():
            z.writestr(name, data)
    data = bytearray(buf.getvalue())
    start = data.index(b"PK\x03\x04") + 30 + len("a/0.png")  # the first member's compressed bytes
    data[start : start + 40] = bytes(40)
    await _refused(server, tmp_path, await _train(server, bytes(data)), "cannot unpack")


@pytest.mark.parametrize(
    ("label", "words"),
    [("😀" * 100, "400 bytes"), ("😀" * 64, "256 bytes"), ("a\nb", "line break"), ("\x1b[31mred", "control")],
)
async def test_label_fields_the_file_system_or_clients_refuse_are_400(server, tmp_path, label, words):
    parts = []
    for i in range(2):
        parts += [("image", (f"{i}.png", _image(i), "image/png")), ("label", (None, label))]
        parts += [("image", (f"b{i}.png", _image(10 + i), "image/png")), ("label", (None, "b"))]
    r = await server.post("/tasks/t/train", files=parts, headers=AUTH)
    await _refused(server, tmp_path, r, words)


async def test_a_label_of_63_four_byte_emoji_fits(server):
    """252 bytes: within a folder name's 255, so accepted (the limit is where the file system puts it)."""
    members = {**_classes("b"), **{f"{'😀' * 63}/{i}.png": _image(i) for i in range(3)}}
    r = await _train(server, zip_of(members))
    assert r.status_code == 202, r.text
    assert (await server.delete(f"/jobs/{r.json()['job']}", headers=AUTH)).json()["status"] == "cancelled"


# -- 2. what the upload check would refuse is refused at submission ----------------------------------------------
@pytest.mark.parametrize(
    ("name", "words"), [("a\nb", "line break"), ("\x1b[31mred", "control character"), ("tab\there", "control")]
)
async def test_class_names_that_are_not_one_line_of_text_are_400(server, tmp_path, name, words):
    r = await _train(server, zip_of(_classes(name, "b")))
    await _refused(server, tmp_path, r, words)


@pytest.mark.parametrize("description", ["two\nlines", "a\ttab", "\x1b[2Jclear"])
async def test_descriptions_the_upload_check_refuses_are_400(server, tmp_path, description):
    r = await _train(server, zip_of(_classes("a", "b")), description=description)
    await _refused(server, tmp_path, r, "metadata 'description' must be one line")


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ({"layers": "999"}, "out of range"),
        ({"layers": "-999"}, "out of range"),
        ({"layers": "0,99"}, "out of range"),
        ({"layers": "first:0"}, "first:k"),
        ({"layers": "last:999"}, "asks for 999 blocks"),
        ({"layers": "1,a"}, "integers"),
        ({"layers": "middle"}, "first:k"),
        ({"layers": "first:0", "method": "linear"}, "first:k"),
    ],
)
async def test_knobs_the_library_refuses_are_400(server, tmp_path, knobs, words):
    await _refused(server, tmp_path, await _train(server, zip_of(_classes("a", "b")), **knobs), words)


async def test_clips_no_adapter_can_take_are_400(server, tmp_path):
    """Clips of 3 frames, in tubelets of 2: the adapter's input would be refused (and VideoViT too)."""
    clips = {f"{c}/{i}.gif": gif(3, seed=10 * k + i, size=12) for k, c in enumerate(("a", "b")) for i in range(2)}
    r = await _train(server, zip_of(clips))
    await _refused(server, tmp_path, r, "multiple of 2")


async def test_nine_long_class_names_train_and_register(server):
    """Nine classes of 30-character names: the description the job makes itself fits the metadata's 300."""
    names = [f"{chr(97 + k)}-{'long class name ' * 2}"[:30] for k in range(9)]
    r = await _train(server, zip_of(_classes(*names)), task="nine", epochs=1)
    assert r.status_code == 202, r.text
    job = await _ended(server, r.json()["job"])
    assert job["status"] == "succeeded", job
    info = (await server.get("/adapters/nine")).json()
    assert info["labels"] == sorted(names)
    assert job["job"] in info["description"] and len(info["description"]) <= 300
    assert info["description"] == job["description"]


async def test_a_description_of_300_characters_is_kept(server):
    r = await _train(server, zip_of(_classes("a", "b")), description="d" * 300)
    assert r.status_code == 202, r.text
    assert r.json()["description"] == "d" * 300
    await server.delete(f"/jobs/{r.json()['job']}", headers=AUTH)


# -- 3. one reader: what is checked is what trains -----------------------------------------------------------------
async def test_train_beside_test_is_checked_and_trained_as_one_image_task(server):
    """train/{cat,dog} and test/{cat,dog}, no val/: the worker reads train/ (split for validation); so does the
    check, which said "classes test and train" (clips of 65 frames) before."""
    members = {**_classes("cat", "dog", per_class=65, prefix="train/"), **_classes("cat", "dog", prefix="test/")}
    r = await _train(server, zip_of(members), task="pets", epochs=1)
    assert r.status_code == 202, r.text
    examples = r.json()["examples"]
    assert examples["classes"] == {"cat": 65, "dog": 65} and examples["modality"] == "image"
    assert examples["own_split"] is False
    job = await _ended(server, r.json()["job"])
    assert job["status"] == "succeeded", job
    assert job["data"]["labels"] == ["cat", "dog"] and job["data"]["modality"] == "image"
    assert job["data"]["train"] + job["data"]["val"] == 130


async def test_train_and_val_folders_are_the_two_splits(server):
    members = {**_classes("cat", "dog", prefix="train/"), **_classes("cat", "dog", per_class=1, prefix="val/")}
    r = await _train(server, zip_of(members), task="pets", epochs=1)
    assert r.status_code == 202, r.text
    assert r.json()["examples"]["classes"] == {"cat": 3, "dog": 3} and r.json()["examples"]["own_split"] is True
    job = await _ended(server, r.json()["job"])
    assert job["status"] == "succeeded", job
    assert (job["data"]["train"], job["data"]["val"]) == (6, 2)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"b/clip/inner/0.png": _image(7)}, "holds a folder"),  # the worker would leave it out
        ({"loose.png": _image(7)}, "outside a class folder"),
    ],
)
async def test_what_the_reader_would_leave_out_is_refused(server, tmp_path, extra, words):
    await _refused(server, tmp_path, await _train(server, zip_of({**_classes("a", "b"), **extra})), words)


# -- 4. a cancel cancels, or answers 409 -------------------------------------------------------------------------
class _Pause:
    """Holds the job runner at one of its waits (``asyncio.to_thread`` of a function of that name, or the
    registration) until released; ``reached`` is set when it gets there."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self.release.wait(), 60)


def _pause_thread(monkeypatch: pytest.MonkeyPatch, name: str) -> _Pause:
    pause, to_thread = _Pause(), asyncio.to_thread

    async def paused(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__name__", None) == name:
            await pause.hold()
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(manager_module.asyncio, "to_thread", paused)
    return pause


async def _stays(client: httpx.AsyncClient, job_id: str, status: str, seconds: float = 1.5) -> dict:
    """The job's record after ``seconds``, asserting it shows ``status`` all along."""
    for _ in range(int(seconds / 0.1)):
        job = await _job(client, job_id)
        assert job["status"] == status, job
        await asyncio.sleep(0.1)
    return job


async def _cancel_held(
    client: httpx.AsyncClient, pause: _Pause, task: str, epochs: int, within: float
) -> tuple[str, httpx.Response]:
    """Trains ``task`` and cancels the job while the runner is held at ``pause`` (reached ``within`` seconds), then
    lets the runner go on: the job's id and the answer to the cancel."""
    r = await _train(client, zip_of(_classes("a", "b")), task=task, epochs=epochs)
    job_id = r.json()["job"]
    await asyncio.wait_for(pause.reached.wait(), within)
    cancel = await client.delete(f"/jobs/{job_id}", headers=AUTH)
    pause.release.set()
    return job_id, cancel


async def _cancelled_while_held(
    client: httpx.AsyncClient, pause: _Pause, task: str, epochs: int, within: float
) -> dict:
    """``_cancel_held`` where the cancel must win: the job's record once it has stayed ``cancelled``."""
    job_id, cancel = await _cancel_held(client, pause, task, epochs, within)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
    job = await _stays(client, job_id, "cancelled")
    assert (await client.get(f"/adapters/{task}")).status_code == 404
    return job


async def test_a_cancel_right_after_acceptance_stops_the_job(server, monkeypatch):
    """The runner had taken the job (still ``queued``) when the cancel came: it must not start training after."""
    job = await _cancelled_while_held(server, _pause_thread(monkeypatch, "_backbone_source"), "early", 100, 30)
    assert job["worker_pid"] is None and job["epoch"] == 0


async def test_a_cancel_after_the_worker_exited_stops_the_job(server, monkeypatch):
    """The worker had written its adapter and exited; the job was not registering yet: the cancel wins."""
    job = await _cancelled_while_held(server, _pause_thread(monkeypatch, "read_bytes"), "late", 1, 120)
    assert job["version"] is None


async def test_a_cancel_while_registering_is_409_and_the_job_succeeds(server, monkeypatch):
    pause, register = _Pause(), manager_module.register_adapter

    async def held(*args: Any) -> Any:
        await pause.hold()
        return await register(*args)

    monkeypatch.setattr(manager_module, "register_adapter", held)
    job_id, cancel = await _cancel_held(server, pause, "kept", 1, 120)
    assert cancel.status_code == 409, cancel.text
    assert "registering" in cancel.json()["error"]["message"]
    assert (await _ended(server, job_id))["status"] == "succeeded"
    # once it has succeeded, a cancel cannot be honoured either
    again = await server.delete(f"/jobs/{job_id}", headers=AUTH)
    assert again.status_code == 409 and "succeeded" in again.json()["error"]["message"], again.text
    assert (await server.get("/adapters/kept")).status_code == 200


async def test_a_cancel_of_a_failed_job_is_409(server, tmp_path):
    r = await _train(server, zip_of(_classes("a", "b")), task="broken", epochs=1)
    job_id = r.json()["job"]
    (tmp_path / "jobs" / job_id / "examples" / "a" / "0.png").write_bytes(b"no longer an image")
    job = await _ended(server, job_id)
    assert job["status"] == "failed", job
    again = await server.delete(f"/jobs/{job_id}", headers=AUTH)
    assert again.status_code == 409 and "failed" in again.json()["error"]["message"], again.text


# -- 12. amplification: the zip as a whole, and the uploads being unpacked at once -------------------------------
@pytest.mark.parametrize("members", [300, 40])
async def test_many_small_members_of_zeros_are_refused_before_anything_is_written(server, tmp_path, members):
    """Each member of exactly 1 MiB escaped the per-member ratio check; the zip's ratio in all does not."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            z.writestr(f"{'ab'[i % 2]}/{i}.png", bytes(1024 * 1024))
    r = await _train(server, buf.getvalue())
    assert r.status_code == 413 and "zip bomb" in r.json()["error"]["message"], r.text
    assert [p.name for p in (tmp_path / "jobs").iterdir() if p.name.startswith("j-")] == []


async def test_examples_being_received_count_against_the_queue(vit, tmp_path):
    """With --train-queue 2, two submissions still unpacking leave no room for a third (429, nothing written)."""
    (tmp_path / "store").mkdir()
    settings = Settings(
        store=tmp_path / "store", jobs_dir=tmp_path / "jobs", admin_key=ADMIN, seed_demo=False, train_queue=2
    )
    app = create_app(settings, backbone=vit)
    async with serving(app) as client:
        manager = app.state.jobs
        held = [manager.reserve()[0] for _ in range(2)]  # what two uploads being unpacked hold
        r = await _train(client, zip_of(_classes("a", "b")))
        assert r.status_code == 429 and "being received" in r.json()["error"]["message"], r.text
        assert int(r.headers["retry-after"]) >= 1
        for job_id in held:
            manager.release(job_id)
        r = await _train(client, zip_of(_classes("a", "b")), epochs=1)
        assert r.status_code == 202, r.text
