"""How many processes `adaptformer serve` runs: --workers and --engine-process against the host."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

import adaptformer_server.tier.plan as plan_module
from adaptformer_server.settings import Settings
from adaptformer_server.tier.plan import MAX_AUTO_WORKERS, Plan, plan


@pytest.mark.parametrize(("value", "want"), [("auto", "auto"), ("AUTO", "auto"), ("3", 3), (2, 2), (" 4 ", 4)])
def test_workers_values(value: object, want: object) -> None:
    assert Settings(workers=value).workers == want


@pytest.mark.parametrize("value", ["0", 0, "65", "two", "", "-1"])
def test_workers_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="workers"):
        Settings(workers=value)


def test_auto_is_one_process_on_a_cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_module, "_cores", lambda: 64)
    assert plan(Settings(device="cpu")) == Plan(fronts=1, split=False)


@pytest.mark.parametrize(("cores", "fronts"), [(1, 1), (2, 1), (8, 7), (64, MAX_AUTO_WORKERS)])
def test_auto_on_a_gpu_leaves_the_engine_a_core(monkeypatch: pytest.MonkeyPatch, cores: int, fronts: int) -> None:
    monkeypatch.setattr(plan_module, "_cores", lambda: cores)
    assert plan(Settings(device="cuda")) == Plan(fronts=fronts, split=fronts > 1)


def test_explicit_counts_and_the_engine_process() -> None:
    assert plan(Settings(workers=1)) == Plan(fronts=1, split=False)
    assert plan(Settings(workers=1, engine_process="on")) == Plan(fronts=1, split=True)
    assert plan(Settings(workers=3)) == Plan(fronts=3, split=True)
    with pytest.raises(ValueError, match="need the engine process"):
        plan(Settings(workers=2, engine_process="off"))


def test_cli_refuses_workers_without_an_engine_process() -> None:
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--workers", "2", "--engine-process", "off"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "need the engine process" in done.stderr
