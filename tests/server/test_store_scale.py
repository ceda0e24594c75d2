"""The store at scale: a watcher poll costs what changed, not what exists; a restart reads no unchanged file.

The paging of GET /adapters is in test_store_scale_paging.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptformer_server import create_app
from adaptformer_server.repository import layout as store_module
from adaptformer_server.repository.layout import AdapterStore
from adaptformer_server.repository.names import version_of
from adaptformer_server.repository.watcher import StoreWatcher
from tests.support import adapter_bytes, image_files, png, serving

OLD = time.time() - 3600  # an hour ago: older than the watcher's racy window


def age(path: Path, when: float = OLD) -> None:
    """Sets the mtime of the store directory and of every file in it to ``when`` (changes made long ago)."""
    for p in [*path.iterdir(), path]:
        os.utime(p, (when, when))


def filled(store: Path, vit, n: int) -> AdapterStore:
    s = AdapterStore(store)
    data = adapter_bytes(vit, "t", seed=1)
    for i in range(n):
        (store / f"t{i:03d}.safetensors").write_bytes(data)
    age(store)
    return s


def watching(s: AdapterStore, **kw) -> StoreWatcher:
    _, seen = s.scan_stamped()
    age(s.root)  # the caches scan_stamped wrote are entries of the directory too
    watcher = StoreWatcher(s, lambda f: None, seen, **kw)
    assert watcher.poll() == {}  # the first poll lists the store once
    return watcher


class Spy:
    """Counts calls of the per-file work: listings, stats, opens and header parses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, s: AdapterStore) -> None:
        self.calls: dict[str, int] = {"scandir": 0, "stat": 0, "examine": 0, "parse": 0}
        for name, owner, attr in [
            ("scandir", os, "scandir"),
            ("stat", os, "stat"),
            ("examine", s, "examine"),
            ("parse", store_module, "read_header"),
        ]:
            monkeypatch.setattr(owner, attr, self._counting(name, getattr(owner, attr)))

    def _counting(self, name: str, fn):
        def counted(*args, **kw):
            self.calls[name] += 1
            return fn(*args, **kw)

        return counted


def test_an_idle_poll_stats_the_directory_and_nothing_else(vit, store, monkeypatch):
    s = filled(store, vit, 200)
    watcher = watching(s, rescan_s=3600)
    spy = Spy(monkeypatch, s)
    for _ in range(20):
        assert watcher.poll() == {}
    assert spy.calls == {"scandir": 0, "stat": 20, "examine": 0, "parse": 0}  # one stat of the directory per poll
    assert watcher.listings == 1


def test_a_write_by_another_process_is_seen_and_only_its_file_is_read(vit, store, monkeypatch):
    s = filled(store, vit, 50)
    watcher = watching(s, rescan_s=3600)
    other = AdapterStore(store)  # another replica's store on the same directory
    new = adapter_bytes(vit, "t", seed=2)
    other.write("t010", new)
    other.delete("t020")
    spy = Spy(monkeypatch, s)
    changes = watcher.poll()
    assert set(changes) == {"t010", "t020"} and changes["t020"] is None
    assert changes["t010"].version == version_of(new)
    assert spy.calls["scandir"] == 1 and spy.calls["examine"] == 1  # one listing, one file opened
    assert watcher.poll() == {}


def test_a_plain_copy_into_the_store_is_seen(vit, store, tmp_path):
    s = filled(store, vit, 5)
    watcher = watching(s, rescan_s=3600)
    src = tmp_path / "flowers.safetensors"
    src.write_bytes(adapter_bytes(vit, "flowers", seed=3))
    shutil.copyfile(src, store / "flowers.safetensors")  # what `cp` does: create, then write in place
    changes = watcher.poll()
    assert changes["flowers"] is not None and changes["flowers"].version == version_of(src.read_bytes())


def test_a_copy_still_running_is_read_again_when_it_completes(vit, store):
    s = filled(store, vit, 5)
    watcher = watching(s, rescan_s=3600)
    data = adapter_bytes(vit, "slow", seed=4)
    with (store / "slow.safetensors").open("wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        assert watcher.poll() == {"slow": None}  # incomplete: not served, looked at again
        f.write(data[len(data) // 2 :])
    # The directory did not change since (the file was only written to): the file itself is watched.
    changes = watcher.poll()
    assert changes["slow"] is not None and changes["slow"].version == version_of(data)


def test_a_file_overwritten_in_place_long_after_is_seen_by_the_periodic_listing(vit, store):
    s = filled(store, vit, 5)
    watcher = watching(s, rescan_s=3600)
    new = adapter_bytes(vit, "t", seed=5)
    (store / "t001.safetensors").write_bytes(new)  # in place: no directory entry changes
    os.utime(store / "t001.safetensors", (OLD + 60, OLD + 60))  # long ago, by the clock: only a listing sees it
    assert watcher.poll() == {}
    watcher.rescan_s = 0.0
    watcher._next_listing = 0.0  # the period is over
    changes = watcher.poll()
    assert changes["t001"].version == version_of(new)


def test_two_changes_in_one_clock_tick_are_both_seen(vit, store):
    """A directory stamp is trusted only once old enough: a second rename within the same mtime tick (a coarse
    filesystem clock) leaves the directory's mtime as it was."""
    s = filled(store, vit, 5)
    watcher = watching(s, rescan_s=3600)
    first, second = adapter_bytes(vit, "t", seed=6), adapter_bytes(vit, "t", seed=7)
    AdapterStore(store).write("t002", first)
    assert watcher.poll()["t002"].version == version_of(first)
    tick = os.stat(store).st_mtime_ns
    AdapterStore(store).write("t002", second)
    os.utime(store, ns=(tick, tick))  # as if in the same tick
    assert watcher.poll()["t002"].version == version_of(second)


def test_a_restart_opens_no_unchanged_file(vit, store, monkeypatch):
    s = filled(store, vit, 30)
    first, _ = s.scan_stamped()
    assert (store / ".index.json").exists()
    (store / "t005.safetensors").write_bytes(adapter_bytes(vit, "t", seed=8))  # changed while the server was down
    restarted = AdapterStore(store)
    spy = Spy(monkeypatch, restarted)
    found, seen = restarted.scan_stamped()
    assert spy.calls["examine"] == 1 and spy.calls["parse"] == 1  # only the changed file
    again = {f.task: f for f in found}
    assert len(again) == 30 and set(seen) == set(again)
    for f in first:
        if f.task != "t005":
            assert again[f.task] == f  # the same header, version, size and stamp as read from the file
    assert again["t005"].version == version_of((store / "t005.safetensors").read_bytes())
    os.utime(store, (OLD, OLD))  # the directory only: the files keep their stamps
    before = os.stat(store).st_mtime_ns
    assert len(AdapterStore(store).scan()) == 30
    assert os.stat(store).st_mtime_ns == before  # nothing changed: no cache rewritten (no replica's watcher stirs)


def test_header_records_of_other_checks_or_damaged_are_not_trusted(vit, store, monkeypatch):
    s = filled(store, vit, 3)
    s.scan_stamped()
    records = json.loads((store / ".index.json").read_text())
    records["format"] = "1/2/another-version"
    (store / ".index.json").write_text(json.dumps(records))
    spy = Spy(monkeypatch, s)
    assert len(s.scan()) == 3 and spy.calls["examine"] == 3
    (store / ".index.json").write_text("{not json")
    assert len(s.scan()) == 3 and spy.calls["examine"] == 6
    s.scan()  # rewritten: records of this server again
    bad = json.loads((store / ".index.json").read_text())
    bad["files"]["t000.safetensors"]["header"] = {"meta": 1}
    (store / ".index.json").write_text(json.dumps(bad))
    assert len(s.scan()) == 3 and spy.calls["examine"] == 7  # the damaged record only


async def test_a_page_in_that_finds_a_file_overwritten_in_place_reads_it_at_once(vit, tasks_store, make_settings):
    """The directory does not change when a file is overwritten in place; a page-in that finds other bytes than
    the registry says makes the next poll look at that file (no 503 until the periodic listing)."""
    app = create_app(make_settings(store_poll_ms=0), backbone=vit)
    async with serving(app) as client:
        manager = app.state.runtime.adapters
        age(tasks_store)
        await manager.sync_store()  # the directory's stamp is old: trusted from now on
        assert manager.watcher.listings >= 1
        listings = manager.watcher.listings
        new = adapter_bytes(vit, "beta", num_classes=3, seed=9, linear=True)
        (tasks_store / "beta.safetensors").write_bytes(new)  # in place, by hand; not resident yet
        os.utime(tasks_store / "beta.safetensors", (OLD + 60, OLD + 60))
        r = await client.post("/predict?task=beta", files=image_files(png(1)))
        assert r.status_code == 200 and r.json()["version"] == version_of(new)
        assert manager.watcher.listings == listings  # found without listing the store


def test_changes_made_by_other_processes_are_seen(vit, store, tmp_path):
    """Another process's AdapterStore.write (a replica's upload) and a `cp` by hand, each a real process."""
    s = filled(store, vit, 10)
    watcher = watching(s, rescan_s=3600)
    upload, copied = adapter_bytes(vit, "up", seed=11), adapter_bytes(vit, "cp", seed=12)
    (tmp_path / "up.bin").write_bytes(upload)
    (tmp_path / "cp.safetensors").write_bytes(copied)
    code = (
        "import sys; from pathlib import Path; from adaptformer_server.repository.layout import AdapterStore; "
        "AdapterStore(Path(sys.argv[1])).write('t004', Path(sys.argv[2]).read_bytes())"
    )
    subprocess.run([sys.executable, "-c", code, str(store), str(tmp_path / "up.bin")], check=True, timeout=120)
    subprocess.run(["cp", str(tmp_path / "cp.safetensors"), str(store / "handmade.safetensors")], check=True)
    changes = watcher.poll()
    assert changes["t004"].version == version_of(upload)
    assert changes["handmade"].version == version_of(copied)
    assert set(changes) == {"t004", "handmade"}
