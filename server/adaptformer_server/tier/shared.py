"""What the processes of one server share: a run directory and the engine's state block.

The run directory (under /dev/shm where it has room, else the temporary directory) holds the engine's ZeroMQ socket, the Unix socket of its app,
the state block and prometheus_client's multiprocess files. The state block is 32 bytes of a memory-mapped file
that the supervisor and the engine write and every front reads on each request (no message needed):

- ``epoch``: which engine process this is (the supervisor counts up at every start);
- ``pid`` of that engine process;
- ``status``: loading, ready or failed;
- ``generation``: bumped by the engine after every change to its registry (upload, delete, rollback, a store
  change), before the change's answer leaves it: a front whose cached entries are of an older generation drops
  them, so every front serves a new version on its very next request.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EngineState", "RunDir", "Snapshot", "alive"]

_FORMAT = "<QqQQ"  # epoch, pid, status, generation
_SIZE = struct.calcsize(_FORMAT)
_GENERATION = struct.calcsize(_FORMAT[:-1])  # offset of the last field
LOADING, READY, FAILED = 0, 1, 2
_PREFIX = "adaptformer-"
_MIN_FREE = 256 * 1024 * 1024
_NAMES = {LOADING: "loading", READY: "ready", FAILED: "failed"}


@dataclass(frozen=True)
class Snapshot:
    epoch: int
    pid: int
    status: int
    generation: int

    @property
    def ready(self) -> bool:
        return self.status == READY

    @property
    def state(self) -> str:
        return _NAMES.get(self.status, "loading")


class EngineState:
    """The 32-byte state block (one writer at a time: the supervisor before an engine starts, then that engine)."""

    def __init__(self, path: Path, create: bool = False) -> None:
        if create:
            path.write_bytes(bytes(_SIZE))
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)

    def read(self) -> Snapshot:
        return Snapshot(*struct.unpack_from(_FORMAT, self._map))

    def _write(self, epoch: int, pid: int, status: int, generation: int) -> None:
        # One copy of bytes packed beforehand, never struct.pack_into: it zeroes its target before it packs, and a
        # front reading the block meanwhile would see status 0 (loading) and refuse a request of a ready engine.
        self._map[:_SIZE] = struct.pack(_FORMAT, epoch, pid, status, generation)

    def starting(self, epoch: int, pid: int) -> None:
        """A new engine process: loading, generation 0."""
        self._write(epoch, pid, LOADING, 0)

    def set_status(self, status: int) -> None:
        now = self.read()
        self._write(now.epoch, now.pid, status, now.generation)

    def bump(self) -> None:
        """The registry changed (the engine's registry calls this): the generation alone is rewritten, so a front
        reading meanwhile sees the epoch, pid and status as they are."""
        generation = self.read().generation + 1
        self._map[_GENERATION:_SIZE] = struct.pack("<Q", generation)

    def close(self) -> None:
        self._map.close()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _roomy(path: str) -> bool:
    """Whether ``path`` is a writable directory with room for the metrics files (about 3 MiB per process; a
    container's /dev/shm is 64 MiB unless its shm size is raised)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return os.access(path, os.W_OK) and st.f_bavail * st.f_frsize >= _MIN_FREE


class RunDir:
    """The run directory of one server (made by the supervisor, removed when it stops)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls) -> RunDir:
        """A new run directory; those of servers that were killed (their supervisor's pid is gone) are removed."""
        base = "/dev/shm" if _roomy("/dev/shm") else tempfile.gettempdir()
        for old in Path(base).glob(f"{_PREFIX}*"):
            with contextlib.suppress(OSError, ValueError):
                if not alive(int((old / "pid").read_text())):
                    shutil.rmtree(old, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
        (path / "pid").write_text(str(os.getpid()))
        run = cls(path)
        run.metrics_dir.mkdir()
        return run

    @property
    def engine_address(self) -> str:
        """The engine's ZeroMQ ROUTER socket (tensors in, logits out; entry lookups)."""
        return f"ipc://{self.path / 'engine.zmq'}"

    @property
    def app_socket(self) -> str:
        """The Unix socket of the engine process's app (every route a front does not answer itself)."""
        return str(self.path / "engine-app.sock")

    @property
    def state_path(self) -> Path:
        return self.path / "state"

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
