"""Hostile and malformed examples are refused before a job is accepted: nothing queued, nothing left on disk."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from adaptformer_server.app import create_app
from tests.server.jobs_support import example, examples_zip, zip_of
from tests.support import encode, gif, serving

ADMIN = "jobs-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _bomb() -> bytes:
    """One member of 64 MiB of zeros: a few dozen KiB compressed (ratio ~1000)."""
    return zip_of({"a/0.png": b"\0" * (64 * 1024 * 1024), "b/0.png": example("red", 0)})


def _traversal(name: str) -> bytes:
    return zip_of({name: example("red", 0), "a/1.png": example("red", 1), "b/1.png": example("blue", 1)})


def _symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = 0o120777 << 16
        z.writestr(info, "/etc/passwd")
        z.writestr("b/0.png", example("red", 0))
    return buf.getvalue()


def _big_image() -> bytes:
    from PIL import Image

    return encode(Image.new("L", (5000, 5000)))  # 25,000,000 pixels > the test limit below


CASES = {
    "not a zip": (b"this is not a zip", 400, "not a readable zip"),
    "zip bomb": (_bomb(), 413, "zip bomb"),
    "dot-dot": (_traversal("../../evil.png"), 400, "outside"),
    "absolute": (_traversal("/etc/evil.png"), 400, "absolute"),
    "backslash": (_traversal("a\\..\\..\\evil.png"), 400, "backslash"),
    "symlink": (_symlink(), 400, "symbolic link"),
    "not an image name": (
        zip_of({"a/0.png": example("red", 0), "a/run.sh": b"#!/bin/sh", "b/0.png": b""}),
        400,
        "not an image",
    ),
    "not an image inside": (
        zip_of(
            {
                "a/0.png": b"GIF89a but not really",
                "a/1.png": example("red", 1),
                "b/0.png": example("blue", 0),
                "b/1.png": example("blue", 1),
            }
        ),
        400,
        "not a readable image",
    ),
    "one class": (examples_zip(5, classes=("red",)), 400, "at least two"),
    "one example in a class": (
        zip_of({"a/0.png": example("red", 0), "b/0.png": example("blue", 0), "b/1.png": example("blue", 1)}),
        400,
        "one example",
    ),
    "loose file": (zip_of({"x.png": example("red", 0)}), 400, "class folder"),
    "too many pixels": (zip_of({"a/0.png": _big_image(), "b/0.png": example("red", 0)}), 413, "pixels"),
    "mixed kinds": (
        zip_of({"a/0.png": example("red", 0), "a/1.png": example("red", 1), "b/0.gif": gif(3), "b/1.gif": gif(3, 5)}),
        400,
        "mixed",
    ),
    "empty": (zip_of({}), 400, "no images"),
}


@pytest.fixture
async def client(make_settings, vit, tmp_path):
    settings = make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs", max_image_pixels=20_000_000)
    async with serving(create_app(settings, backbone=vit)) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_before_acceptance(client, tmp_path, case):
    data, status, words = CASES[case]
    r = await client.post("/tasks/t/train", files={"examples": ("x.zip", data, "application/zip")}, headers=AUTH)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()
    assert (await client.get("/jobs", headers=AUTH)).json()["jobs"] == []
    assert [p.name for p in (tmp_path / "jobs").iterdir() if p.name.startswith("j-")] == []
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "jobs" / "evil.png").exists()


async def test_member_count_and_unpacked_size_limits(make_settings, vit, tmp_path):
    settings = make_settings(
        admin_key=ADMIN, jobs_dir=tmp_path / "jobs", max_example_files=10, max_examples_unzipped=4096
    )
    async with serving(create_app(settings, backbone=vit)) as c:
        files = {"examples": ("x.zip", examples_zip(6), "application/zip")}
        r = await c.post("/tasks/t/train", files=files, headers=AUTH)
        assert r.status_code == 413 and "members" in r.text
        files = {"examples": ("x.zip", examples_zip(2, classes=("red", "blue")), "application/zip")}
        r = await c.post("/tasks/t/train", files=files, headers=AUTH)
        assert r.status_code == 413 and "unpacks to" in r.text


async def test_body_limit_and_wrong_media_type(make_settings, vit, tmp_path):
    settings = make_settings(admin_key=ADMIN, jobs_dir=tmp_path / "jobs", max_examples_bytes=10_000)
    async with serving(create_app(settings, backbone=vit)) as c:
        files = {"examples": ("x.zip", os.urandom(1_100_000), "application/zip")}  # the limit + 1 MiB of framing
        assert (await c.post("/tasks/t/train", files=files, headers=AUTH)).status_code == 413
        r = await c.post("/tasks/t/train", content=b"{}", headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 415


async def test_a_wrapper_folder_is_dropped_and_labels_are_checked(client):
    files = {"examples": ("x.zip", examples_zip(3, wrapper="colours/"), "application/zip")}
    r = await client.post("/tasks/w/train", files=files, headers=AUTH, params={"epochs": 1})
    assert r.status_code == 202 and r.json()["examples"]["classes"] == {"blue": 3, "green": 3, "red": 3}
    await client.delete(f"/jobs/{r.json()['job']}", headers=AUTH)
    for label in ("../x", "train", ".x", ""):
        parts = [("image", ("a.png", example("red", 0), "image/png")), ("label", (None, label))] * 2
        r = await client.post("/tasks/w/train", files=parts, headers=AUTH)
        assert r.status_code == 400, (label, r.text)
    parts = [("image", ("a.png", b"not an image", "image/png")), ("label", (None, "a"))]
    assert (await client.post("/tasks/w/train", files=parts, headers=AUTH)).status_code == 400


async def test_clips_as_gifs_and_frame_folders(client):
    """GIF clips and folders of frames are clips; clips of different lengths need frames=N."""
    gifs = {f"{c}/{i}.gif": gif(4, seed=10 * k + i) for k, c in enumerate(("left", "right")) for i in range(3)}
    r = await client.post(
        "/tasks/c/train", files={"examples": ("x.zip", zip_of(gifs), "application/zip")}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    assert r.json()["examples"]["modality"] == "clip" and r.json()["examples"]["frames"] == [4]
    await client.delete(f"/jobs/{r.json()['job']}", headers=AUTH)
    frames = {f"{c}/clip{i}/{f}.png": example("red", f) for c in ("a", "b") for i in range(2) for f in range(3 + i)}
    files = {"examples": ("x.zip", zip_of(frames), "application/zip")}
    r = await client.post("/tasks/c/train", files=files, headers=AUTH)
    assert r.status_code == 400 and "frames=N" in r.json()["error"]["message"]
    # 3 frames are not a whole number of 2-frame tubelets: the adapter could not be written, so no job
    r = await client.post("/tasks/c/train", files=files, headers=AUTH, params={"frames": 3})
    assert r.status_code == 400 and "multiple of 2" in r.json()["error"]["message"], r.text
    r = await client.post("/tasks/c/train", files=files, headers=AUTH, params={"frames": 4})
    assert r.status_code == 202 and r.json()["examples"]["frames"] == [3, 4]
    await client.delete(f"/jobs/{r.json()['job']}", headers=AUTH)
