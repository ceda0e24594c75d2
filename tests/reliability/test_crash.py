"""Crashes: kill -9 the server (its own pid) during uploads, restart it on the same store, and check that the
store holds only complete adapters that load and that every acknowledged upload is served after the restart."""

from __future__ import annotations

import pytest

from benchmarks.reliability import Kit, crash_run

pytestmark = pytest.mark.e2e


def _check(report: dict) -> None:
    assert report["problems"] == [], report
    for cycle in report["cycles"]:
        assert cycle["temp_files_after_restart"] == 0, report
        assert cycle["acknowledged_served"] >= 1, report  # at least one upload was acknowledged before the kill


def test_kill_during_uploads_quick(kit: Kit, tmp_path):
    _check(crash_run(kit, tmp_path, cycles=1, uploaders=4, kill_after=(1.0, 2.0), seed=1))


@pytest.mark.slow
def test_kill_during_uploads_repeated(kit: Kit, tmp_path):
    _check(crash_run(kit, tmp_path, cycles=5, uploaders=6, kill_after=(0.5, 3.0), seed=2))
