"""Fixtures of the reliability tests: a tiny ViT for in-process apps, a backbone and 16 adapters, and real server
processes on 127.0.0.1.

Servers are session-scoped (a start imports torch and loads the backbone) and stopped at the end; each keeps
its log in the session's temporary directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from timm.models.vision_transformer import VisionTransformer

from benchmarks.reliability import (
    ADMIN_KEY,
    PREDICT_KEY,
    Kit,
    Server,
    build_kit,
    make_images,
    references,
)
from tests.reliability import probes
from tests.support import tiny_vit

MiB = 1024 * 1024

# The shared server's limits: small enough that the hostile cases are cheap, large enough for the load.
SHARED_SETTINGS = {
    "max_body_bytes": 8 * MiB,
    "max_upload_bytes": 12 * MiB,
    "max_image_pixels": 2_000_000,
    "max_request_pixels": 4_000_000,
    "slots": 16,
}


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    """A tiny random ViT for the in-process apps, one per test module."""
    return tiny_vit()


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    return build_kit(tmp_path_factory.mktemp("reliability"))


@pytest.fixture(scope="session")
def images() -> list[tuple[str, bytes, str]]:
    return make_images(9)


def _seed_store(store: Path, files: dict[str, bytes]) -> None:
    store.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (store / f"{name}.safetensors").write_bytes(data)


@pytest.fixture(scope="session")
def shared_server(kit: Kit) -> Iterator[Server]:
    """Default settings but smaller body/pixel limits; the 16 load tasks and a 4-frame clip task."""
    store = kit.workdir / "store-shared"
    _seed_store(store, {**kit.tasks, "clip4": kit.clip_task()})
    with Server(kit.weights, store, kit.workdir / "server-shared.log", **SHARED_SETTINGS) as server:
        yield server


@pytest.fixture(scope="session")
def shared_tasks(shared_server: Server, kit: Kit) -> dict[str, str]:
    """The 16 load tasks of the shared server: name -> version."""
    import httpx

    listed = httpx.get(f"{shared_server.url}/adapters", timeout=30).json()["adapters"]
    return {a["task"]: a["version"] for a in listed if a["task"] in kit.tasks}


@pytest.fixture(scope="session")
def shared_refs(shared_server: Server, shared_tasks: dict[str, str], images) -> dict:
    """Every (task, image) of the shared server run alone."""
    return asyncio.run(references(shared_server.url, shared_tasks, images))


@pytest.fixture(scope="session")
def keyed_server(kit: Kit) -> Iterator[Server]:
    """A server with a predict key and an admin key, and three tasks."""
    store = kit.workdir / "store-keyed"
    _seed_store(store, {name: kit.tasks[name] for name in ("t00", "t01", "t02")})
    env = {"ADAPTFORMER_API_KEYS": PREDICT_KEY, "ADAPTFORMER_ADMIN_KEY": ADMIN_KEY}
    with Server(kit.weights, store, kit.workdir / "server-keyed.log", env=env) as server:
        yield server


@pytest.fixture(scope="session")
def probed_server(kit: Kit) -> Iterator[Server]:
    """The probed-request tests' server: small pixel limits, 2-second header and body timeouts, default (loopback)
    host rules, no keys; tasks t00 and clip4."""
    store = kit.workdir / "store-probed-requests"
    store.mkdir(parents=True, exist_ok=True)
    (store / "t00.safetensors").write_bytes(kit.tasks["t00"])
    (store / "clip4.safetensors").write_bytes(kit.clip_task())
    # Timeouts as variables: a server without the settings still starts (and the timeout tests fail, not error).
    env = {"ADAPTFORMER_HEADER_TIMEOUT": str(probes.TIMEOUT_S), "ADAPTFORMER_BODY_TIMEOUT": str(probes.TIMEOUT_S)}
    log = kit.workdir / "server-probed-requests.log"
    settings = {"max_image_pixels": probes.MAX_IMAGE_PIXELS, "max_request_pixels": probes.MAX_REQUEST_PIXELS}
    with Server(kit.weights, store, log, env=env, **settings) as s:
        yield s
