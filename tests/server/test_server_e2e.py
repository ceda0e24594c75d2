"""End to end: a real ``python -m adaptformer_server`` process on a free loopback port."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from live_support import free_port, wait_ready
from safetensors.torch import save_file
from server_support import adapter_bytes, image_files, png, upload_files

from adaptformer.embedded import build_embedded

pytestmark = pytest.mark.e2e


def test_serve_upload_predict_replace_delete(tmp_path: Path):
    torch.manual_seed(0)
    backbone = build_embedded(num_classes=10).eval()  # the embedded architecture, random weights
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    vit = copy.deepcopy(backbone)
    vit.reset_classifier(0)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTFORMER_")}
    env["ADAPTFORMER_MAX_WAIT_MS"] = "2"
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--weights", str(weights)]
    cmd += ["--store", str(tmp_path / "store"), "--port", str(port), "--no-seed-demo", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ready = wait_ready(url, proc)
        assert ready["backbone"] == "adaptformer-embedded-vit" and ready["adapters"] == 0
        with httpx.Client(base_url=url, timeout=30) as client:
            up = client.post("/adapters", **upload_files(adapter_bytes(vit, "fashion", seed=1, winner=2)))
            assert up.status_code == 201, up.text
            v1 = up.json()["adapter"]["version"]
            r = client.post("/predict?task=fashion&top_k=3", files=image_files(png(1), png(2)))
            assert r.status_code == 200, r.text
            assert r.json()["version"] == v1
            assert [p[0]["label"] for p in r.json()["predictions"]] == ["fashion-2", "fashion-2"]

            up = client.post("/adapters", **upload_files(adapter_bytes(vit, "fashion", seed=2, winner=3)))
            assert up.json()["previous_version"] == v1
            r = client.post("/predict?task=fashion", content=png(3), headers={"Content-Type": "image/png"})
            assert r.json()["version"] == up.json()["adapter"]["version"]
            assert r.json()["predictions"][0][0]["label"] == "fashion-3"

            assert client.delete("/adapters/fashion").status_code == 200
            gone = client.post("/predict?task=fashion", files=image_files(png(1)))
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
            assert "adaptformer_predict_requests_total" in client.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def test_bad_backbone_exits_with_clear_error(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTFORMER_")}
    cmd = [sys.executable, "-m", "adaptformer_server", "--weights", str(tmp_path / "missing.safetensors")]
    cmd += ["--store", str(tmp_path / "store"), "--port", str(free_port())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "weights file not found" in proc.stderr and "missing.safetensors" in proc.stderr
