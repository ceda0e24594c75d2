"""The client is its own small distribution: httpx and pydantic, never torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_python

CLIENT = Path(__file__).resolve().parents[2] / "client"


def test_imports_without_torch() -> None:
    code = "import sys; import adaptformer_client, adaptformer_client.cli; assert 'torch' not in sys.modules"
    run_python(code)


def test_pillow_and_numpy_are_not_imported_eagerly() -> None:
    code = (
        "import sys; import adaptformer_client, adaptformer_client.cli\n"
        "loaded = {'torch', 'PIL', 'numpy'} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    run_python(code)


def test_dependencies_are_httpx_and_pydantic_only() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    names = [dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]]
    assert sorted(names) == ["httpx", "pydantic"]
    extras = " ".join(dep for deps in project.get("optional-dependencies", {}).values() for dep in deps)
    assert "torch" not in extras
    assert project["scripts"]["adaptformer-client"] == "adaptformer_client.cli:main"
