"""A local Ray cluster on loopback and ``adaptformer serve --ray`` on it, for the Ray tests and the replica benchmark.

All traffic stays on 127.0.0.1: every Ray process and driver gets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray
then takes 127.0.0.1 as the node address) and the head starts with ``--node-ip-address=127.0.0.1``. ``make
test-ray`` also runs the tests in a network namespace of their own with only a loopback interface, when it may.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
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
from PIL import Image

from benchmarks.process import free_port, wait_ready

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


def png(seed: int) -> bytes:
    """A 28x28 RGB image (the embedded backbone's input size)."""
    import random

    rng = random.Random(seed)
    img = Image.new("RGB", (28, 28))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(28 * 28)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


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
    """``ray start --head`` on 127.0.0.1 in a temp dir; ``ray stop`` (same environment) on exit.

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
            _ray("stop", "--force", env=env, log=log, timeout=120)
        finally:
            shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@contextmanager
def ray_server(cluster: Cluster, store: Path, *args: str, timeout: float = 300) -> Iterator[Server]:
    """``adaptformer serve --ray`` (the CLI a user runs) on ``cluster``; ready when /readyz answers 200."""
    port = cluster.http_port
    log = cluster.log.with_name(f"server-{time.monotonic_ns()}.log")
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--ray", "--ray-address", cluster.address,
           "--host", "127.0.0.1", "--port", str(port), "--store", str(store), "--log-level", "info", *args]  # fmt: skip
    out = log.open("wb")
    proc = subprocess.Popen(cmd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, log=log)
    try:
        wait_ready(server.url, proc, timeout=timeout, interval=0.5, output=server.output)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI deletes its application on the way out
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def demo_file(task: str) -> bytes:
    """A demo adapter shipped with the package (made on the embedded backbone), read without importing torch."""
    spec = importlib.util.find_spec("adaptformer")
    assert spec is not None and spec.submodule_search_locations
    return (Path(next(iter(spec.submodule_search_locations))) / "demo" / f"{task}.safetensors").read_bytes()


async def predict(c: httpx.AsyncClient, task: str, seed: int = 1) -> httpx.Response:
    return await c.post(f"/predict?task={task}", files={"image": ("x.png", png(seed), "image/png")})


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
