"""Settings from environment variables and flags, the CLI, auth key handling, batching rules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaptformer_server.batcher import Batcher
from adaptformer_server.cli import parse_settings
from adaptformer_server.errors import Overloaded
from adaptformer_server.metrics import Metrics
from adaptformer_server.settings import Settings, default_store


def test_defaults_and_environment(monkeypatch, tmp_path):
    s = Settings()
    assert (s.host, s.port, s.backbone, s.max_batch_size, s.slots) == ("127.0.0.1", 8000, "embedded", 32, 32)
    assert s.seed_demo and s.api_keys == [] and s.admin_key is None and s.loopback
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store() == tmp_path / "adaptformer" / "adapters"
    monkeypatch.setenv("ADAPTFORMER_API_KEYS", "one, two ,")
    monkeypatch.setenv("ADAPTFORMER_ADMIN_KEY", "s3cr3t-admin")
    monkeypatch.setenv("ADAPTFORMER_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ADAPTFORMER_SEED_DEMO", "false")
    monkeypatch.setenv("ADAPTFORMER_HOST", "0.0.0.0")
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["one", "two"]
    assert s.admin_key.get_secret_value() == "s3cr3t-admin" and "s3cr3t" not in repr(s)
    assert s.max_batch_size == 7 and not s.seed_demo and not s.loopback


@pytest.mark.parametrize("read", ["s3cr3t-admin\n", " s3cr3t-admin\r\n", "\ts3cr3t-admin "])
def test_an_admin_key_read_from_a_file_loses_its_newline(monkeypatch, read):
    """``ADAPTFORMER_ADMIN_KEY="$(cat keyfile)"``-style values: the key clients send is the one without the newline
    (it used to be kept, and every ``Bearer KEY`` was refused); a key of blanks only is no key."""
    monkeypatch.setenv("ADAPTFORMER_ADMIN_KEY", read)
    assert Settings().admin_key.get_secret_value() == "s3cr3t-admin"
    monkeypatch.setenv("ADAPTFORMER_ADMIN_KEY", " \n")
    assert Settings().admin_key is None


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("ADAPTFORMER_PORT", "9000")
    monkeypatch.setenv("ADAPTFORMER_MAX_WAIT_MS", "9")
    s = parse_settings(["serve", "--port", "8100", "--no-seed-demo", "--store", "/data/adapters", "--dtype", "float32"])
    assert s.port == 8100 and s.max_wait_ms == 9 and not s.seed_demo
    assert s.store == Path("/data/adapters") and s.dtype == "float32"
    s = parse_settings(["--backbone", "vit_base_patch16_224.augreg2_in21k_ft_in1k", "--api-keys", "a,b"])
    assert s.backbone.startswith("vit_base") and len(s.api_keys) == 2


@pytest.mark.parametrize(
    "argv", [["--port", "99999"], ["--device", "tpu"], ["--max-batch-size", "0"], ["--dtype", "x"]]
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_settings(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_module_help_lists_every_setting():
    out = subprocess.run(
        [sys.executable, "-m", "adaptformer_server", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out, name
    assert "ADAPTFORMER_MAX_BATCH_SIZE" in out


async def test_batcher_groups_by_shape_and_bounds_queue():
    seen: list[list[tuple]] = []

    def run(x, keys, table):
        seen.append([tuple(x.shape), list(keys)])
        return [torch.tensor([float(i)]) for i in range(x.shape[0])]

    class Spec:
        tubelet = 2

    class Info:
        input = Spec()

    class Adapter:
        info = Info()

    batcher = Batcher(run, max_batch_size=4, max_wait_ms=50, queue_size=6, metrics=Metrics())
    batcher.start()
    try:
        image, clip = torch.zeros(3, 8, 8), torch.zeros(4, 3, 8, 8)
        results = await asyncio.gather(
            batcher.submit([image, image], "a@1", Adapter()),  # type: ignore[arg-type]
            batcher.submit([clip], "c@1", Adapter()),  # type: ignore[arg-type]
            batcher.submit([image], "b@1", Adapter()),  # type: ignore[arg-type]
        )
        assert [len(r) for r in results] == [2, 1, 1]
        shapes = sorted(s[0] for s in seen)
        assert shapes == [(1, 4, 3, 8, 8), (3, 3, 8, 8)]  # images of two tasks together, the clip alone
        assert ["a@1", "a@1", "b@1"] in [s[1] for s in seen]
        with pytest.raises(Overloaded):
            await batcher.submit([image] * 7, "a@1", Adapter())  # type: ignore[arg-type]
    finally:
        await batcher.stop()
