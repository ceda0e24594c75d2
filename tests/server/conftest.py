"""Fixtures of the server tests: a tiny backbone, a store with three tasks, settings (the empty `store` is
tests/conftest.py's)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from timm.models.vision_transformer import VisionTransformer

from adaptformer_server.settings import Settings
from tests.support import adapter_bytes, tiny_vit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ADAPTFORMER_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def vit() -> VisionTransformer:
    return tiny_vit()


@pytest.fixture
def tasks_store(store: Path, vit: VisionTransformer) -> Path:
    """A store with ``alpha`` (4 classes), ``beta`` (3 classes, linear probe) and ``clip`` (4-frame clips)."""
    (store / "alpha.safetensors").write_bytes(adapter_bytes(vit, "alpha", seed=1))
    (store / "beta.safetensors").write_bytes(adapter_bytes(vit, "beta", num_classes=3, seed=2, linear=True))
    (store / "clip.safetensors").write_bytes(adapter_bytes(vit, "clip", seed=3, clip=True))
    return store


@pytest.fixture
def make_settings(store: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict = {"store": store, "max_wait_ms": 2, "seed_demo": False}
        values.update(overrides)
        return Settings(**values)

    return make
