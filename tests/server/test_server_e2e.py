"""End to end: a real ``python -m adaptformer_server`` process on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ServerProcess,
    adapter_bytes,
    clean_env,
    embedded_backbone,
    free_port,
    image_files,
    png,
    upload_files,
)

pytestmark = pytest.mark.e2e


def test_serve_upload_predict_replace_delete(tmp_path: Path):
    vit = embedded_backbone(tmp_path / "backbone.safetensors")  # the embedded architecture, random weights
    args = ["--weights", tmp_path / "backbone.safetensors", "--store", tmp_path / "store", "--no-seed-demo"]
    server = ServerProcess([*args, "--log-level", "warning"], log=tmp_path / "server.log", ready=False,
                           env={"ADAPTFORMER_MAX_WAIT_MS": "2"})  # fmt: skip
    url = server.url
    try:
        ready = server.wait_ready()
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
        returncode = server.stop()
    assert returncode == 0, server.output(2000)


def test_bad_backbone_exits_with_clear_error(tmp_path: Path):
    env = clean_env()
    cmd = [sys.executable, "-m", "adaptformer_server", "--weights", str(tmp_path / "missing.safetensors")]
    cmd += ["--store", str(tmp_path / "store"), "--port", str(free_port())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "weights file not found" in proc.stderr and "missing.safetensors" in proc.stderr
