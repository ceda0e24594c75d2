"""The docs test's world: a working directory holding the files the docs name, and two real servers on loopback."""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageSequence

from tests.docs.doc_blocks import ROOT, MarkerError, all_blocks
from tests.support import ServerProcess

VENV_BIN = Path(sys.executable).parent
DEMO = ROOT / "adapters" / "adaptformer" / "demo"


@dataclass
class DocWorld:
    workdir: Path
    open: ServerProcess  # no keys: the server `make serve` starts
    keyed: ServerProcess  # a predict key and an admin key
    predict_key: str
    admin_key: str

    def install_cars(self, server: ServerProcess) -> None:
        """Installs the docs' example task ``cars`` (4 classes) unless the server has it: API.md reads it before
        its upload example, and several blocks delete it."""
        if httpx.get(f"{server.url}/adapters/cars", headers=self._auth, timeout=30).status_code == 200:
            return
        with (self.workdir / "cars.safetensors").open("rb") as f:
            files = {"file": ("cars.safetensors", f)}
            r = httpx.post(f"{server.url}/adapters", files=files, headers=self._auth, timeout=60)
        assert r.status_code == 201, r.text

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def env(self, server: ServerProcess) -> dict[str, str]:
        """The environment a block runs in: the venv's commands first on PATH, the server's URL for the client
        (whose default is port 8000), and the key variables the docs use."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTFORMER_")}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["ADAPTFORMER_URL"] = server.url
        env["ADMIN_KEY"] = env["KEY"] = self.admin_key
        env["PREDICT_KEY"] = self.predict_key
        return env


def _start(tmp: Path, name: str, *args: str) -> ServerProcess:
    """``adaptformer serve`` (the command the docs name) on a free port; not waited for, so that both start at once."""
    flags = ["--store", tmp / f"{name}-store", "--log-level", "warning", "--max-wait-ms", "2", *args]
    return ServerProcess(flags, log=tmp / f"{name}.log", command=[VENV_BIN / "adaptformer", "serve"], ready=False)


def _files(work: Path) -> None:
    """The files the docs name: the repository's examples/, and stand-ins for the placeholder names of API.md and
    client/README.md (shirt.png, a.png, f0.png, cars.safetensors, ...), each what its name says."""
    import torch

    import adaptformer as af
    from adaptformer.embedded import build_embedded, load_embedded

    ex = ROOT / "examples"
    (work / "examples").symlink_to(ex, target_is_directory=True)
    for name, src in {"shirt.png": "fashion-shirt.png", "a.png": "digits-7.png", "b.png": "digits-3.png"}.items():
        shutil.copyfile(ex / src, work / name)
    shutil.copyfile(ex / "motion-up.gif", work / "wave.gif")
    with Image.open(ex / "motion-down-left.gif") as gif:
        for i, frame in enumerate(ImageSequence.Iterator(gif)):
            frame.convert("RGB").save(work / f"f{i}.png")
    (work / "notes.txt").write_text("not an image\n")
    Image.new("L", (8000, 8000)).save(work / "huge.png")
    with (work / "big.bin").open("wb") as f:
        f.truncate(40_000_000)
    torch.save({"weight": torch.zeros(2, 2)}, work / "model.pt")
    # What the README's (skipped) `adaptformer train --task digits ... --out adapters/digits.safetensors` writes.
    (work / "adapters").mkdir()
    shutil.copyfile(DEMO / "digits.safetensors", work / "adapters" / "digits.safetensors")
    # A 4-class adapter on the served backbone, and one made on other weights.
    torch.manual_seed(0)
    vit = load_embedded(with_head=False)
    cars = af.add_adapters(copy.deepcopy(vit), af.AdapterConfig(bottleneck=8, scale=0.1), num_classes=4)
    af.save_adapter(cars, work / "cars.safetensors", task="cars", labels=["sedan", "suv", "truck", "van"])
    other = build_embedded(num_classes=0)
    other = af.add_adapters(other, af.AdapterConfig(bottleneck=8, scale=0.1), num_classes=4)
    af.save_adapter(
        other,
        work / "trained-on-another-vit.safetensors",
        task="cars",
        labels=["sedan", "suv", "truck", "van"],
        backbone_name="vit_small_patch16_224",
    )


@pytest.fixture(scope="session")
def doc_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocWorld]:
    tmp = tmp_path_factory.mktemp("docs")
    predict_key, admin_key = secrets.token_hex(16), secrets.token_hex(16)
    servers = [_start(tmp, "open"), _start(tmp, "keyed", "--api-keys", predict_key, "--admin-key", admin_key)]
    try:
        work = tmp / "work"
        work.mkdir()
        _files(work)
        for server in servers:
            server.wait_ready(timeout=300)
        world = DocWorld(work, servers[0], servers[1], predict_key, admin_key)
        for server in servers:
            world.install_cars(server)
        yield world
    finally:
        for server in servers:
            server.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Lists the blocks the docs test does not run, with the reason their marker gives."""
    try:
        skipped = [b for b in all_blocks() if b.kind != "output" and b.skip]
    except MarkerError:
        return
    ran = [r for k in ("passed", "failed", "skipped") for r in terminalreporter.stats.get(k, [])]
    if not any(getattr(r, "nodeid", "").startswith("tests/docs/") for r in ran):
        return
    terminalreporter.section("docs blocks not run here (docs-test: skip markers)")
    for b in skipped:
        terminalreporter.write_line(f"{b.id} [{b.lang or 'bare'}]: {b.skip}")
