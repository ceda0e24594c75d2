"""Fixtures of the tampered-adapter-file tests: every hostile file of the table, and one in-process server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.reliability.tampered.files import HOSTILE, demo, make_app, seed


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
