"""A local Ray cluster on loopback and ``adaptformer serve --ray`` on it, for the Ray tests and the replica benchmark.

All traffic stays on 127.0.0.1: every Ray process and driver gets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray
then takes 127.0.0.1 as the node address) and the head starts with ``--node-ip-address=127.0.0.1``. ``make
test-ray`` also runs the tests in a network namespace of their own with only a loopback interface, when it may.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import ServerProcess, free_port, png

REPLICA_HEADER = "X-AdaptFormer-Replica"


def ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray.serve") is not None
    except ModuleNotFoundError:
        return False


def interfaces() -> list[str]:
    """Network interfaces of this network namespace (``['lo']`` inside ``unshare -n``; /sys/class/net would show
    those of the namespace sysfs was mounted in)."""
    return sorted(name for _, name in socket.if_nameindex())


def loopback_env() -> dict[str, str]:
    """The environment every Ray command and driver of the tests runs with."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTFORMER_", "RAY_"))}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node address 127.0.0.1, never a public interface
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_DOCKER_CPU_WARNING="1",
        RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S="60",
        PYTHONUNBUFFERED="1",
    )
    return env


def replica_pid(replica: str) -> int:
    """The process id in a replica name (``<ray id>@<host>:<pid>``)."""
    return int(replica.rpartition(":")[2])


@dataclass
class Cluster:
    address: str  # 127.0.0.1:<gcs port>
    env: dict[str, str]
    log: Path
    http_port: int  # Ray Serve's proxy: fixed for the cluster once Serve starts, so every server run uses it


def _ray(*args: str, env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        subprocess.run([str(Path(sys.executable).with_name("ray")), *args], env=env, stdout=out, stderr=out,
                       timeout=timeout, check=True)  # fmt: skip


@contextmanager
def ray_cluster(num_cpus: int = 4) -> Iterator[Cluster]:
    """``ray start --head`` on 127.0.0.1 in a temp dir; on exit its processes, and only those, are stopped.

    Not ``ray stop``: that stops every Ray process of the machine's user, including another run's cluster (two
    Ray test runs or benchmarks at once on one machine would stop each other's).

    ``num_cpus`` is what Ray may hand out, not the machine's cores: a replacement replica can then be placed
    while a killed one's reservation is still being released.
    """
    env = loopback_env()
    temp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = temp / "cluster.log"
    port = free_port()
    address = f"127.0.0.1:{port}"
    env["RAY_ADDRESS"] = address
    args = ["start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}",
            "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
            f"--ray-client-server-port={free_port()}"]  # fmt: skip
    try:
        _ray(*args, env=env, log=log, timeout=180)
        yield Cluster(address=address, env=env, log=log, http_port=free_port())
    finally:
        try:
            stop_cluster(temp)
        finally:
            shutil.rmtree(temp, ignore_errors=True)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of the processes visible in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = (int(stat.rpartition(")")[2].split()[1]), cmdline)
    return out


def cluster_pids(temp: Path) -> set[int]:
    """The processes of the cluster started in ``temp``: those whose command line names it (GCS, raylet, Ray's
    agents, workers) and their descendants (workers and actors rename themselves, e.g. ``ray::ProxyActor``)."""
    procs = _processes()
    mine = {pid for pid, (_, cmd) in procs.items() if str(temp) in cmd and pid != os.getpid()}
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine - {os.getpid()}
        if not more:
            return mine
        mine |= more


def stop_cluster(temp: Path, timeout: float = 30) -> None:
    """SIGTERM to the cluster's processes, SIGKILL to those left after ``timeout`` seconds."""
    pids = cluster_pids(temp)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
            time.sleep(0.2)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


Server = ServerProcess


@contextmanager
def ray_server(cluster: Cluster, store: Path, *args: str, timeout: float = 300) -> Iterator[Server]:
    """``adaptformer serve --ray`` (the CLI a user runs) on ``cluster``; ready when /readyz answers 200."""
    log = cluster.log.with_name(f"server-{time.monotonic_ns()}.log")
    flags = ["--ray", "--ray-address", cluster.address, "--host", "127.0.0.1", "--store", store, "--log-level", "info"]
    server = Server([*flags, *args], log=log, base_env=cluster.env, port=cluster.http_port, ready_timeout=timeout,
                    interval=0.5)  # fmt: skip
    try:
        yield server
    finally:
        server.stop(timeout=90)  # the CLI deletes its application on the way out


def demo_file(task: str) -> bytes:
    """A demo adapter shipped with the package (made on the embedded backbone), read without importing torch."""
    spec = importlib.util.find_spec("adaptformer")
    assert spec is not None and spec.submodule_search_locations
    return (Path(next(iter(spec.submodule_search_locations))) / "demo" / f"{task}.safetensors").read_bytes()


async def predict(c: httpx.AsyncClient, task: str, seed: int = 1) -> httpx.Response:
    return await c.post(f"/predict?task={task}", files={"image": ("x.png", png(seed, 28), "image/png")})


async def observe(c: httpx.AsyncClient, task: str, seconds: float, clients: int = 6) -> list[tuple]:
    """Predictions for ``task`` from ``clients`` concurrent loops: (sent, received, replica, status, version),
    times in seconds from the call."""
    start = time.perf_counter()
    records: list[tuple] = []

    async def loop(i: int) -> None:
        while (sent := time.perf_counter() - start) < seconds:
            r = await predict(c, task, i)
            version = r.json().get("version") if r.status_code == 200 else None
            records.append((sent, time.perf_counter() - start, r.headers.get(REPLICA_HEADER), r.status_code, version))

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return records


async def observe_until(
    c: httpx.AsyncClient,
    task: str,
    fresh: Callable[[int, str | None], bool],
    replicas: int = 2,
    settle: float = 1.0,
    timeout: float = 60.0,
    clients: int = 6,
) -> list[tuple]:
    """:func:`observe` until ``replicas`` replicas have each answered ``fresh`` and the load went on ``settle``
    seconds after the last of them did (long enough to see one go back); fails after ``timeout`` seconds."""
    start = time.perf_counter()
    records: list[tuple] = []
    settled_at: list[float] = []

    def done() -> bool:
        if not settled_at:
            fresh_replicas = {rep for _, _, rep, status, version in records if fresh(status, version)}
            if len(fresh_replicas) >= replicas:
                settled_at.append(time.perf_counter())
        return bool(settled_at) and time.perf_counter() - settled_at[0] >= settle

    async def loop(i: int) -> None:
        while not done():
            sent = time.perf_counter() - start
            if sent > timeout:
                seen = {rep for _, _, rep, status, version in records if fresh(status, version)}
                raise AssertionError(f"not within {timeout} s: {replicas} replicas serving the change (got {seen})")
            r = await predict(c, task, i)
            version = r.json().get("version") if r.status_code == 200 else None
            records.append((sent, time.perf_counter() - start, r.headers.get(REPLICA_HEADER), r.status_code, version))

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return records


def propagation(records: list[tuple], fresh: Callable[[int, str | None], bool]) -> dict[str, dict]:
    """Per replica, from :func:`observe`'s records (started right after a change returned to the client):

    - ``fresh_by_s``: when its first answer showing the change arrived (it had the change by then);
    - ``last_stale_s``: when its last answer not showing it was sent (it did not have it before then);
    - ``answers``, ``stale_after_fresh``: answers, and stale answers sent after a fresh one (should be none).
    """
    by: dict[str, dict] = defaultdict(lambda: {"fresh_by_s": None, "last_stale_s": 0.0, "answers": 0})
    for sent, received, replica, status, version in records:
        r = by[replica]
        r["answers"] += 1
        if fresh(status, version):
            r["fresh_by_s"] = received if r["fresh_by_s"] is None else min(r["fresh_by_s"], received)
        else:
            r["last_stale_s"] = max(r["last_stale_s"], sent)
    for replica, r in by.items():
        r["stale_after_fresh"] = sum(
            1
            for sent, _, rep, status, version in records
            if rep == replica and r["fresh_by_s"] is not None and sent > r["fresh_by_s"] and not fresh(status, version)
        )
        for key in ("fresh_by_s", "last_stale_s"):
            r[key] = None if r[key] is None else round(r[key], 3)
    return dict(by)
