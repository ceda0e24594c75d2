"""A real ``python -m adaptformer_server`` process on a free loopback port, serving the embedded architecture
(random weights) and adapters made on it, for the browser and tritonclient tests."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from adaptformer.embedded import build_embedded
from benchmarks import process
from benchmarks.process import free_port


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> dict:
    """Waits for /readyz 200 (benchmarks.process.wait_ready) and returns its body."""
    process.wait_ready(url, proc, timeout=timeout)
    return httpx.get(f"{url}/readyz", timeout=30).json()


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
