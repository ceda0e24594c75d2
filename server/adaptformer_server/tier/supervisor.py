"""The parent of a server with several processes: one engine process, N front processes on one port.

It binds one socket per front on the port (SO_REUSEPORT) and runs the fronts under uvicorn's process manager,
replacing a front that dies or stops answering its health pings. It starts the engine process and watches it: an engine that dies
after it was ready is started again (its fronts answer 503 with Retry-After meanwhile, and /readyz 503); an engine
that cannot load (bad backbone, unreadable store) stops the server with exit status 1, as the one-process server
does; so does an engine that dies 5 times within 60 s. SIGTERM or Ctrl+C: the fronts drain their requests, then
the engine stops; every child is killed by the kernel if this process itself is killed (``tier.process``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import time
from collections import deque
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from adaptformer_server.connections import http_protocol
from adaptformer_server.settings import Settings
from adaptformer_server.tier.engine import STARTUP_FAILURE, run_engine
from adaptformer_server.tier.front import front_app
from adaptformer_server.tier.plan import Plan
from adaptformer_server.tier.shared import EngineState, RunDir

__all__ = ["EngineKeeper", "serve_tier"]

log = logging.getLogger("adaptformer_server")

_RESTARTS = 5  # engine deaths within _RESTART_WINDOW_S before the server gives up (exit 1)
_RESTART_WINDOW_S = 60.0
_STOP_S = 20.0  # how long the engine may take to stop after SIGTERM before it is killed


class FrontConfig(uvicorn.Config):
    """uvicorn's config for the fronts, sent to each front process: the header-deadline protocol class is made
    there (a class made at run time cannot be pickled)."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def load(self) -> None:
        if not self.loaded:
            self.http = http_protocol(self.header_timeout)
        super().load()


class EngineKeeper:
    """Starts the engine process and starts it again when it dies."""

    def __init__(self, settings: Settings, run: RunDir, state: EngineState) -> None:
        self.settings = settings
        self.run = run
        self.state = state
        self.epoch = 0
        self.process: BaseProcess | None = None
        self._deaths: deque[float] = deque(maxlen=_RESTARTS)

    def start(self) -> None:
        self.epoch += 1
        self.state.starting(self.epoch, 0)
        process = multiprocessing.get_context("spawn").Process(
            target=run_engine, args=(self.settings, self.run, os.getpid()), name="adaptformer-engine"
        )
        process.start()
        assert process.pid is not None
        self.state.starting(self.epoch, process.pid)
        self.process = process
        log.info("engine process %d started (epoch %d)", process.pid, self.epoch)

    def check(self) -> bool:
        """False when the server must stop: the engine cannot load, or keeps dying."""
        process = self.process
        if process is None or process.is_alive():
            return True
        process.join()
        _mark_dead(process.pid)
        if process.exitcode == STARTUP_FAILURE:
            log.error("the engine process could not load its backbone or store (see above): stopping")
            return False
        now = time.monotonic()
        self._deaths.append(now)
        if len(self._deaths) == _RESTARTS and now - self._deaths[0] < _RESTART_WINDOW_S:
            log.error("the engine process died %d times within %.0f s: stopping", _RESTARTS, _RESTART_WINDOW_S)
            return False
        log.error("the engine process %d died (exit status %s): starting a new one", process.pid, process.exitcode)
        self.start()
        return True

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.terminate()
            process.join(_STOP_S)
            if process.is_alive():
                log.warning("the engine process did not stop within %.0f s: killing it", _STOP_S)
                process.kill()
                process.join()
        _mark_dead(process.pid)


def _mark_dead(pid: int | None) -> None:
    """Drops a dead process's live gauges from the multiprocess metrics."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)


def bind_fronts(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per front, all on ``host:port`` (SO_REUSEPORT): the kernel spreads new connections
    over them by address hash, so an idle front gets its share (one shared socket hands most connections to
    whichever process waits longest). The supervisor holds them: connections that reach the socket of a front
    being replaced wait in its backlog for the new one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host.strip("[]"), port))
            port = sock.getsockname()[1]  # --port 0: the port the first one got
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Supervisor(Multiprocess):
    """uvicorn's process manager for the fronts (signals, health pings, drain on stop), each front on its own
    socket, and the engine process's keeper."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], engine: EngineKeeper) -> None:
        super().__init__(config, sockets)
        self.engine = engine
        self.failed = False

    def _front(self, i: int) -> Process:
        process = Process(self.config, [self.sockets[i]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._front(i) for i in range(len(self.sockets))]

    def restart_all(self) -> None:  # SIGHUP: each front replaced in turn, its socket kept
        for i, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._front(i)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                return
            old.terminate()
            old.join()
            _mark_dead(old.pid)
            self.processes[i] = new

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for i, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # dead, or hung (no answer to the health ping)
            process.join()
            _mark_dead(process.pid)
            if self.should_exit.is_set():
                return
            log.error("front process %s died (exit status %s): starting a new one", process.pid, process.exitcode)
            self.processes[i] = self._front(i)
        if not self.engine.check():
            self.failed = True
            self.should_exit.set()


def serve_tier(settings: Settings, plan: Plan) -> int:
    """Runs the server as an engine process and ``plan.fronts`` front processes until stopped; the exit status."""
    run = RunDir.create()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run.metrics_dir)  # every child counts into one set of files
    state = EngineState(run.state_path, create=True)
    engine = EngineKeeper(settings, run, state)
    config = FrontConfig(
        partial(front_app, settings, str(run.path), os.getpid()),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=plan.fronts,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=10,
        timeout_worker_healthcheck=60,  # a front imports torch before it answers its first health ping
        header_timeout=settings.header_timeout,
    )
    supervisor: Supervisor | None = None
    try:
        try:
            socks = bind_fronts(settings.host, settings.port, plan.fronts)
        except OSError as e:
            log.error("cannot listen on %s:%d: %s", settings.host, settings.port, e)
            return 1
        try:
            supervisor = Supervisor(config, socks, engine)
            engine.start()
            log.info(
                "serving on http://%s:%d with %d front processes and one engine process (run directory %s)",
                settings.host,
                settings.port,
                plan.fronts,
                run.path,
            )
            supervisor.run()
        finally:
            engine.stop()
            for sock in socks:
                sock.close()
    finally:
        state.close()
        run.remove()
    return 1 if supervisor is None or supervisor.failed else 0
