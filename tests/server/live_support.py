"""A real ``python -m adaptformer_server`` process on a free loopback port, serving the embedded architecture
(random weights) and adapters made on it, for the browser and tritonclient tests."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from adaptformer.embedded import build_embedded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


@contextmanager
def live_server(tmp_path: Path, adapters: Callable[[VisionTransformer], dict[str, bytes]], *args: str) -> Iterator[str]:
    """Starts the server with ``adapters(vit)`` (task -> file bytes) in its store; yields its URL."""
    torch.manual_seed(0)
    backbone = build_embedded(num_classes=10).eval()
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    vit = copy.deepcopy(backbone)
    vit.reset_classifier(0)
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    for task, data in adapters(vit).items():
        (store / f"{task}.safetensors").write_bytes(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTFORMER_")}
    env["ADAPTFORMER_MAX_WAIT_MS"] = "2"
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--weights", str(weights), "--store", str(store)]
    cmd += ["--port", str(port), "--no-seed-demo", "--log-level", "warning", "--threads", "1", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
