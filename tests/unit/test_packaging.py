"""What a wheel holds: every package of the source tree, and package data that names files that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folders() -> dict[str, Path]:
    return {name: ROOT / folder for name, folder in _setuptools()["package-dir"].items()}


def test_every_package_is_listed() -> None:
    """A subpackage missing from the list works in an editable install and is absent from the wheel."""
    found = set()
    for top, folder in _folders().items():
        for init in folder.rglob("__init__.py"):
            found.add(".".join([top, *init.parent.relative_to(folder).parts]))
    assert found == set(_setuptools()["packages"])


def test_package_data_names_files_that_exist() -> None:
    for package, patterns in _setuptools()["package-data"].items():
        folder = _folders()[package]
        for pattern in patterns:
            assert any(folder.glob(pattern)), f"{package}: {pattern} matches no file"
