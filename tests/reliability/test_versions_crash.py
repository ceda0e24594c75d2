"""Versions survive a crash at any step (issue 17): an upload, a rollback or a delete cut short between any two of
its file-system steps leaves a current file that is a complete version, history copies that hash to their names,
every version kept before, and a server that starts on it and serves, lists and rolls back as before.

A crash is simulated by making the n-th mutating file-system call (rename, unlink, utime) raise and every later
one too, as a killed process makes none: temp files stay behind as after kill -9. The steps are enumerated until
the operation completes, so a new step in the store's write path is covered without editing this test.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from adaptformer_server import create_app
from adaptformer_server.repository.layout import HISTORY, AdapterStore
from adaptformer_server.repository.names import version_of
from adaptformer_server.settings import Settings
from tests.support import png, serving

DEMO = Path(__file__).resolve().parents[2] / "adapters" / "adaptformer" / "demo"


class Crash(BaseException):
    """The process died here (BaseException: no ``except Exception`` in the store may swallow it)."""


def variant(i: int) -> bytes:
    """The digits demo with a different description: another version of the same task, same tensors."""
    data = (DEMO / "digits.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["description"] = f"digits, version {i}"
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


class CrashAt:
    """Makes the ``n``-th mutating file-system call and every later one raise :class:`Crash`."""

    CALLS = ("replace", "rename", "unlink", "utime", "rmdir")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
        self.n, self.calls, self.crashed = n, 0, False
        for name in self.CALLS:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            if self.crashed or self.calls == self.n:
                self.crashed = True
                raise Crash
            self.calls += 1
            return real(*args, **kw)

        return call


def state(root: Path, task: str) -> tuple[str | None, dict[str, bytes]]:
    """The current version (hash of the current file) and the history copies, each checked against its name."""
    current = root / f"{task}.safetensors"
    version = version_of(current.read_bytes()) if current.exists() else None
    kept = {}
    for p in (root / HISTORY / task).glob("*.safetensors") if (root / HISTORY / task).is_dir() else []:
        data = p.read_bytes()
        assert version_of(data) == p.stem, f"history copy {p.name} does not hold its version"
        kept[p.stem] = data
    return version, kept


def every_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prepare, operation) -> list[tuple[int, Path]]:
    """Runs ``operation`` on a fresh copy of the prepared store with a crash before step 0, 1, 2... until it
    completes; returns (step, store) for each crashed run and the completed one (step -1)."""
    runs = []
    for n in range(50):
        root = tmp_path / f"run{n}"
        prepare(AdapterStore(root, keep_versions=3))
        with monkeypatch.context() as m:
            crash = CrashAt(m, n)
            try:
                operation(AdapterStore(root, keep_versions=3))
            except Crash:
                runs.append((n, root))
                continue
        assert not crash.crashed
        runs.append((-1, root))
        return runs
    raise AssertionError("the operation never completed")


def make_app(store: Path) -> FastAPI:
    values: dict[str, Any] = {"store": store, "seed_demo": False, "max_wait_ms": 2, "store_poll_ms": 0}
    return create_app(Settings(**values, keep_versions=3))


V = [variant(i) for i in range(5)]
VERSION = [version_of(v) for v in V]


def three_uploads(store: AdapterStore) -> None:
    for i in (1, 2, 3):
        store.write("digits", V[i])


def test_upload_crash_at_every_step(monkeypatch, tmp_path):
    runs = every_crash(monkeypatch, tmp_path, three_uploads, lambda s: s.write("digits", V[4]))
    assert len(runs) >= 4  # keep the replaced version, keep the new one, replace the current file, prune
    for step, root in runs:
        current, kept = state(root, "digits")
        assert current in (VERSION[3], VERSION[4]), step
        if step == -1:
            assert current == VERSION[4] and set(kept) == {VERSION[2], VERSION[3], VERSION[4]}
        else:  # nothing kept before is lost (the prune comes last)
            assert {VERSION[1], VERSION[2], VERSION[3]} <= set(kept), step
        store = AdapterStore(root, keep_versions=3)
        listed = [v.version for v in store.versions("digits")]
        assert store.current_version("digits") == current and listed.count(current) == 1, step


def test_rollback_crash_at_every_step(monkeypatch, tmp_path):
    runs = every_crash(monkeypatch, tmp_path, three_uploads, lambda s: s.promote("digits", VERSION[2]))
    for step, root in runs:
        current, kept = state(root, "digits")
        assert current == (VERSION[2] if step == -1 else VERSION[3]), step
        assert set(kept) == {VERSION[1], VERSION[2], VERSION[3]}, step


def test_hand_copied_current_is_kept_when_replaced_crash_at_every_step(monkeypatch, tmp_path):
    def hand_copy(store: AdapterStore) -> None:
        store.root.mkdir(parents=True, exist_ok=True)
        (store.root / "digits.safetensors").write_bytes(V[1])

    runs = every_crash(monkeypatch, tmp_path, hand_copy, lambda s: s.write("digits", V[2]))
    for step, root in runs:
        current, kept = state(root, "digits")
        assert current in (VERSION[1], VERSION[2]), step
        if current == VERSION[2]:
            assert VERSION[1] in kept, step  # the hand-copied version is kept before it is replaced


def test_delete_crash_leaves_no_task(monkeypatch, tmp_path):
    runs = every_crash(monkeypatch, tmp_path, three_uploads, lambda s: s.delete("digits"))
    for step, root in runs:
        current, kept = state(root, "digits")
        if current is None:  # the history of a deleted task is removed at start (once no write can be under way)
            AdapterStore(root).clean_history(min_age_s=0)
            assert not (root / HISTORY / "digits").exists(), step
        else:
            assert current == VERSION[3] and set(kept) == {VERSION[1], VERSION[2], VERSION[3]}, step


async def test_a_server_restarted_after_each_crash_serves_lists_and_rolls_back(monkeypatch, tmp_path):
    upload = every_crash(monkeypatch, tmp_path / "up", three_uploads, lambda s: s.write("digits", V[4]))
    rollback = every_crash(monkeypatch, tmp_path / "rb", three_uploads, lambda s: s.promote("digits", VERSION[2]))
    for step, root in upload + rollback:
        current, _ = state(root, "digits")
        async with serving(make_app(root)) as client:
            info = (await client.get("/adapters/digits")).json()
            assert info["version"] == current, step
            listed = (await client.get("/adapters/digits/versions")).json()
            assert listed["current"] == current
            assert current in [v["version"] for v in listed["versions"]]
            r = await client.post("/predict?task=digits", files=IMAGE)
            assert r.status_code == 200 and r.json()["version"] == current, step
            pinned = next(v["version"] for v in listed["versions"] if not v["current"])
            r = await client.post(f"/predict?task=digits@{pinned}", files=IMAGE)
            assert r.status_code == 200 and r.json()["version"] == pinned, step
            r = await client.post("/adapters/digits/rollback", json={"version": pinned})
            assert r.status_code == 200 and r.json()["adapter"]["version"] == pinned, step


IMAGE = {"image": ("a.png", png(size=28, color=(200, 10, 10)), "image/png")}  # a request's one image part
