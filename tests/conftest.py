"""Fixtures every test tree uses: the folders a server is given."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty adapter store (``--store``)."""
    return _folder(tmp_path / "store")


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """An empty folder that ``file://`` adapter sources may read (the ``adapter_source_dirs`` setting)."""
    return _folder(tmp_path / "allowed")


def _folder(path: Path) -> Path:
    path.mkdir()
    return path
