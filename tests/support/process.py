"""Server processes on loopback for the tests and the benchmarks: a free port, a spawned ``adaptformer_server``,
a bounded wait until /readyz answers 200, and a clean stop (SIGINT, the server's own shutdown; SIGKILL only if it
has not exited in time)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import torch

__all__ = [
    "SERVE",
    "WORKERS_ENV",
    "ServerProcess",
    "children",
    "clean_env",
    "cpu_seconds",
    "free_port",
    "live_server",
    "run_python",
    "stop",
    "wait_ready",
]

# The server as a user starts it; the tests add their flags.
SERVE = (sys.executable, "-m", "adaptformer_server", "serve")
# `TEST_SERVER_WORKERS=2 make test` (make test-workers): every server the tests start runs 2 front processes and
# an engine process (unless a test names --workers itself).
WORKERS_ENV = "TEST_SERVER_WORKERS"


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid`` and their titles (command lines), from ``/proc`` (Linux)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out[int(stat.parent.name)] = cmdline.strip()
    return out


def run_python(code: str, *, blocked: Sequence[str] = (), timeout: float = 60) -> str:
    """Runs ``code`` in a fresh interpreter in which the ``blocked`` modules cannot be imported; returns its output.

    A failure (an exception, an import of a blocked module) fails the calling test with the interpreter's stderr.
    """
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + block + code], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from ``/proc/<pid>/stat`` (Linux).

    Raises:
        OSError: no such process (or no /proc).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_env(env: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without its ``ADAPTFORMER_*`` variables, then ``env``."""
    out = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("ADAPTFORMER_")}
    out.update(env or {})
    return out


def wait_ready(
    url: str,
    proc: subprocess.Popen,
    *,
    timeout: float = 300,
    interval: float = 0.2,
    output: Callable[[], str] = lambda: "",
    path: str = "/readyz",
) -> None:
    """Polls ``url`` + ``path`` (the server's /readyz; another server's health route) until it answers 200.

    Raises:
        AssertionError: the process exited first, or ``timeout`` seconds passed; the message ends with
            ``output()`` (e.g. the tail of the server's log).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{output()}")
        try:
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"server at {url} not ready after {timeout} s:\n{output()}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, timeout: float = 20) -> int:
    """SIGINT (a clean shutdown), then SIGKILL if ``proc`` has not exited within ``timeout`` s; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ServerProcess:
    """A server process on a loopback port (``--port`` is added to ``args``); stdout and stderr go to ``log``
    (appended to; an anonymous temporary file without one), so that a chatty server never blocks on a pipe.

    Args:
        args: Flags after ``command``.
        log: The log file; a restart on the same file appends to it.
        env: Variables over the clean environment (:func:`clean_env`).
        base_env: The environment to clean instead of this process's.
        port: The port (default: a free one).
        command: The program and its subcommand (default :data:`SERVE`).
        ready: Wait for /readyz 200 (``ready_timeout``, polled every ``interval`` s) before returning; a server
            that exits or times out first is stopped and the wait's AssertionError raised.
    """

    def __init__(
        self,
        args: Sequence[object] = (),
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        port: int | None = None,
        command: Sequence[object] = SERVE,
        ready: bool = True,
        ready_timeout: float = 300,
        interval: float = 0.2,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out: IO[bytes] = log.open("ab") if log is not None else tempfile.TemporaryFile()  # noqa: SIM115
        cmd = [*map(str, command), *map(str, args), "--port", str(self.port)]
        workers = os.environ.get(WORKERS_ENV)
        if workers and tuple(command) == SERVE and "--workers" not in cmd and "--ray" not in cmd:
            cmd += ["--workers", workers]
        self.started = time.perf_counter()
        self.ready_s: float | None = None  # seconds from spawn to /readyz 200
        self.ready_cpu_s: float | None = None  # CPU seconds the process had used then (None without /proc)
        self.proc = subprocess.Popen(cmd, env=clean_env(env, base=base_env), stdout=self._out, stderr=subprocess.STDOUT)
        if ready:
            try:
                self.wait_ready(ready_timeout, interval)
            except BaseException:
                self.stop()
                raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """:func:`cpu_seconds` of this server process and its children (a server of several processes: the engine
        and the fronts)."""
        total, todo = 0.0, [self.pid]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):  # a child that just exited
                total += cpu_seconds(pid)
            todo.extend(children(pid))
        return total

    def wait_ready(self, timeout: float = 300, interval: float = 0.2) -> dict[str, Any]:
        """Waits (:func:`wait_ready`) and returns the body of /readyz."""
        wait_ready(self.url, self.proc, timeout=timeout, interval=interval, output=self.output)
        self.ready_s = time.perf_counter() - self.started
        with contextlib.suppress(OSError):
            self.ready_cpu_s = self.cpu_s()
        return httpx.get(f"{self.url}/readyz", timeout=30).json()

    def output(self, n: int = 6000) -> str:
        """The last ``n`` bytes of the log."""
        with contextlib.suppress(OSError, ValueError):
            if self.log is not None:
                with self.log.open("rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - n))
                    return f.read().decode(errors="replace")
            size = os.fstat(self._out.fileno()).st_size
            return os.pread(self._out.fileno(), n, max(0, size - n)).decode(errors="replace")
        return ""

    def kill(self) -> None:
        """``kill -9`` this server's pid (this process only, never by name)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def stop(self, timeout: float = 20) -> int:
        """:func:`stop`; returns the exit status. The log stays readable when it is a file."""
        code = stop(self.proc, timeout)
        if self.log is not None:
            self._out.close()
        return code

    def close(self) -> None:
        """Stops the server and drops an anonymous log."""
        self.stop()
        self._out.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def live_server(tmp_path: Path, adapters: Callable[[torch.nn.Module], dict[str, bytes]], *args: str) -> Iterator[str]:
    """A server on the embedded architecture (random weights, :func:`embedded_backbone`) with ``adapters(vit)``
    (task -> file bytes) in its store; yields its URL and stops it on the way out."""
    from .adapters import embedded_backbone  # here: a free port or a server process needs no torch

    vit = embedded_backbone(tmp_path / "backbone.safetensors")
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    for task, data in adapters(vit).items():
        (store / f"{task}.safetensors").write_bytes(data)
    flags = ["--weights", tmp_path / "backbone.safetensors", "--store", store, "--no-seed-demo"]
    flags += ["--log-level", "warning", "--threads", "1", *args]
    with ServerProcess(flags, log=tmp_path / "server.log", env={"ADAPTFORMER_MAX_WAIT_MS": "2"}) as server:
        yield server.url
