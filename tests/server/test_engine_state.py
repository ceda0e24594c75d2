"""The engine's state block as the fronts read it: a registry change (``bump``) never shows a ready engine as
loading, even to a front reading at the very moment it is written (another process, as in a server)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from adaptformer_server.tier.shared import READY, EngineState


def _bump_for(path: Path, seconds: float) -> None:
    state = EngineState(path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        state.bump()
    state.close()


def test_a_front_never_sees_a_ready_engine_as_loading_while_the_registry_changes(tmp_path: Path) -> None:
    path = tmp_path / "state"
    state = EngineState(path, create=True)
    state.starting(1, 4321)
    state.set_status(READY)
    writer = multiprocessing.get_context("fork").Process(target=_bump_for, args=(path, 1.5))
    writer.start()
    reads, wrong, generations = 0, 0, set()
    try:
        while writer.is_alive() or reads == 0:
            now = state.read()
            reads += 1
            generations.add(now.generation)
            wrong += (now.epoch, now.pid, now.ready) != (1, 4321, True)
    finally:
        writer.join(10)
        state.close()
    assert len(generations) > 100  # the reads did overlap the writes
    assert wrong == 0, f"{wrong} of {reads} reads saw the engine other than ready (epoch 1, pid 4321)"
