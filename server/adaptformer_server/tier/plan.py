"""How many processes a server runs: ``--workers`` and ``--engine-process`` resolved against the host."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from adaptformer_server.settings import Settings

__all__ = ["MAX_AUTO_WORKERS", "Plan", "plan"]

MAX_AUTO_WORKERS = 16


@dataclass(frozen=True)
class Plan:
    """``fronts`` HTTP processes; ``split``: the model in an engine process of its own (else one process)."""

    fronts: int
    split: bool


def _cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _cuda(settings: Settings) -> bool:
    if settings.device.startswith("cuda"):
        return True
    if settings.device != "auto":
        return False
    import torch  # only to tell whether a GPU is there

    return torch.cuda.is_available()


def plan(settings: Settings) -> Plan:
    """The process plan: ``auto`` workers are one per core left after the engine's (at most 16) on a CUDA device,
    one on a CPU-only host (where the forward pass wants the cores and one process is the faster shape)."""
    if settings.workers == "auto":
        fronts = max(1, min(MAX_AUTO_WORKERS, _cores() - 1)) if _cuda(settings) else 1
    else:
        fronts = int(settings.workers)
    if settings.engine_process == "off" and fronts > 1:
        raise ValueError(
            f"{fronts} workers need the engine process (every front sends its tensors to the one model): "
            "drop --engine-process off (ADAPTFORMER_ENGINE_PROCESS=off), or serve with --workers 1"
        )
    split = fronts > 1 or settings.engine_process == "on"
    return Plan(fronts=fronts, split=split)
