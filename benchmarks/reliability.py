"""Reliability runs against a real ``python -m adaptformer_server`` process on 127.0.0.1.

    python -m benchmarks.reliability                  # full: 64 clients for 60 s, then overload, hot swap, crash
    python -m benchmarks.reliability --quick          # the sizes the default test suite uses (about a minute)
    python -m benchmarks.reliability --clients 32 --seconds 20 --out /tmp/rel.json

What it runs (each function is also used by ``tests/reliability``, which asserts on the results):

1. ``load_run``: N closed-loop clients for T seconds over 16 tasks, 1-3 images of mixed sizes and formats per
   request. Every answer is checked against the same image run alone (sent before the load, one request at a
   time): same task, same version, every label's score within 1e-4. Counts 5xx, lost (transport error or
   timeout) and mismatched answers; throughput, p50/p95/p99, and the server's resident memory (VmRSS from
   /proc/<pid>/status) at start, middle and end.
2. ``overload_run``: clients beyond capacity (a small ``queue_size``): the 503s carry Retry-After and come fast,
   /healthz stays responsive, and once the load stops every request succeeds again.
3. ``hotswap_run``: replace, add and delete adapters every 100-200 ms under load. Version ``v`` of a task makes
   class ``v`` win on every input, so each answer names the version whose head produced it; it must be the
   version the response reports, and that version must have been current at some instant while the request ran.
   The only failure a swap may cause is a 404 for a task deleted while the request was in flight.
4. ``crash_run``: ``kill -9`` (``os.kill(pid, SIGKILL)``) the server while uploads run, restart it on the same
   store, and check that the store holds only complete adapters that load, and that every upload acknowledged
   (201) before the kill is served after the restart, at the acknowledged version.

The load generator runs in this process (asyncio + httpx) on the same machine as the server: on a small CPU
both compete for cores, so throughput is a lower bound. The backbone is the embedded architecture with random
weights (seed 0): speed and correctness checks do not depend on the weight values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from PIL import Image

import adaptformer as af
from tests.support import ServerProcess, adapter_bytes, embedded_backbone

__all__ = [
    "Kit",
    "Server",
    "Traffic",
    "build_kit",
    "crash_run",
    "hotswap_run",
    "load_run",
    "make_images",
    "overload_run",
    "references",
]

TASKS = 16
TOL = 1e-4  # softmax scores of an answer under load vs the same image alone
ADMIN_KEY = "rel-admin-key"
PREDICT_KEY = "rel-predict-key"
Part = tuple[str, bytes, str]  # one image of a request: (file name, encoded bytes, content type)
Refs = dict[tuple[str, int], dict[str, float]]  # (task, image index) -> label -> score, each sent alone


# -- set-up ----------------------------------------------------------------------------------------------------
@dataclass
class Kit:
    """A backbone weights file, the same backbone in memory, and adapter files made on it."""

    workdir: Path
    weights: Path
    vit: torch.nn.Module
    tasks: dict[str, bytes]  # the 16 load tasks

    def clip_task(self, name: str = "clip4", frames: int = 4) -> bytes:
        return adapter_bytes(self.vit, name, seed=7, clip=True, frames=frames)

    def factory(self, num_classes: int, bottleneck: int = 8) -> Callable[..., bytes]:
        """``make(name, seed, winner=None)``: an adapter file on this backbone with random trainable weights
        (:func:`tests.support.adapter_bytes`); with ``winner``, that class wins on every input."""
        return functools.partial(adapter_bytes, self.vit, num_classes=num_classes, bottleneck=bottleneck)


def build_kit(workdir: Path, tasks: int = TASKS) -> Kit:
    """The embedded architecture with random weights (seed 0) and ``tasks`` adapters of 4-10 classes."""
    workdir.mkdir(parents=True, exist_ok=True)
    weights = workdir / "backbone.safetensors"
    vit = embedded_backbone(weights, seed=0)
    vit.pretrained_cfg = {**(getattr(vit, "pretrained_cfg", None) or {}), "architecture": "adaptformer-embedded-vit"}
    kit = Kit(workdir=workdir, weights=weights, vit=vit, tasks={})
    for i in range(tasks):
        name = f"t{i:02d}"
        kit.tasks[name] = adapter_bytes(vit, name, num_classes=4 + i % 7, seed=100 + i)
    return kit


_SIZES = [(8, 8), (28, 28), (40, 30), (64, 64), (100, 37), (224, 224), (320, 240), (640, 480), (17, 300)]
_FORMATS = [("PNG", "image/png", "RGB"), ("JPEG", "image/jpeg", "RGB"), ("WEBP", "image/webp", "RGB"),
            ("PNG", "image/png", "RGBA"), ("BMP", "image/bmp", "L"), ("GIF", "image/gif", "P")]  # fmt: skip


def make_images(n: int, seed: int = 0) -> list[Part]:
    """``n`` images (file name, bytes, content type) of mixed sizes, formats and modes; smooth noise."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        w, h = _SIZES[i % len(_SIZES)]
        fmt, ctype, mode = _FORMATS[i % len(_FORMATS)]
        small = (torch.rand(max(2, h // 8), max(2, w // 8), 4, generator=g) * 255).to(torch.uint8).numpy()
        img = Image.fromarray(small, "RGBA").resize((w, h), Image.BILINEAR).convert(mode)
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append((f"img{i}.{fmt.lower()}", buf.getvalue(), ctype))
    return out


class Server(ServerProcess):
    """A ``python -m adaptformer_server`` process on a free loopback port (:class:`tests.support.ServerProcess`);
    its log goes to (is appended to) ``log``."""

    def __init__(
        self,
        weights: Path,
        store: Path,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        ready_timeout: float = 300,
        **settings: object,
    ) -> None:
        self.store = store
        args = ["--weights", weights, "--store", store, "--host", "127.0.0.1", "--no-seed-demo"]
        args += ["--log-level", "warning"]
        for key, value in settings.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        super().__init__(args, log=log, env=env, ready_timeout=ready_timeout, interval=0.1)

    def rss_mb(self) -> float:
        """Resident memory of the server process (VmRSS in /proc/<pid>/status), MiB."""
        return rss_mb(self.pid)

    def kill9(self) -> None:
        """``kill -9`` this server's pid (only this process, never by name)."""
        self.kill()

    def log_tail(self, n: int = 3000) -> str:
        return self.output(n)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def upload(url: str, data: bytes, task: str | None = None, headers: dict | None = None) -> httpx.Response:
    form = {"task": task} if task else None
    files = {"file": ("adapter.safetensors", data, "application/octet-stream")}
    return httpx.post(f"{url}/adapters", files=files, data=form, headers=headers, timeout=60)


def upload_all(url: str, files: dict[str, bytes]) -> dict[str, str]:
    """Uploads each file under its name; returns task -> version."""
    versions = {}
    for name, data in files.items():
        r = upload(url, data, name)
        if r.status_code != 201:
            raise RuntimeError(f"upload of {name} failed: {r.status_code} {r.text}")
        versions[name] = r.json()["adapter"]["version"]
    return versions


# -- measurements ------------------------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {f"p{int(q * 100)}_ms": round(1000 * pct(values, q), 1) for q in (0.5, 0.95, 0.99)} | {
        "max_ms": round(1000 * max(values), 1) if values else float("nan")
    }


def _scores(prediction: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in prediction}


def _matches(got: dict[str, float], ref: dict[str, float]) -> bool:
    return got.keys() == ref.keys() and all(abs(got[k] - ref[k]) <= TOL for k in ref)


def _multipart(images: Sequence[Part]) -> list:
    return [("image", img) for img in images]


async def references(url: str, tasks: dict[str, str], images: Sequence[Part], headers: dict | None = None) -> Refs:
    """Each (task, image) sent alone, one request at a time: label -> score for every class."""
    refs: Refs = {}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
        for task, version in tasks.items():
            for i, img in enumerate(images):
                r = await client.post(f"/predict?task={task}&top_k=1000", files=_multipart([img]))
                if r.status_code != 200 or r.json()["version"] != version:
                    raise RuntimeError(f"reference {task}/{i}: {r.status_code} {r.text[:300]}")
                refs[(task, i)] = _scores(r.json()["predictions"][0])
    return refs


@dataclass(frozen=True)
class Traffic:
    """What the load runs send and check: the server's URL, its tasks (name -> version), the images, and every
    (task, image)'s answer alone (:func:`references`)."""

    url: str
    tasks: dict[str, str]
    images: Sequence[Part]
    refs: Refs


class Load:
    """Closed-loop clients over the tasks; every answer checked against the references."""

    def __init__(self, traffic: Traffic, *, seed: int = 0, max_images: int = 3, timeout: float = 60) -> None:
        self.url, self.tasks, self.images, self.refs = traffic.url, traffic.tasks, traffic.images, traffic.refs
        self.rng = random.Random(seed)
        self.max_images = max_images
        self.timeout = timeout
        self.status: Counter[int] = Counter()
        self.latencies: list[float] = []  # of 200s
        self.latency_by_status: dict[int, list[float]] = {}
        self.lost: list[str] = []
        self.mismatched: list[str] = []
        self.retry_after_missing = 0
        self.images_done = 0
        self.stop = asyncio.Event()

    async def worker(self, client: httpx.AsyncClient, deadline: float) -> None:
        names = sorted(self.tasks)
        while not self.stop.is_set() and time.monotonic() < deadline:
            task = self.rng.choice(names)
            idx = [self.rng.randrange(len(self.images)) for _ in range(self.rng.randint(1, self.max_images))]
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    f"/predict?task={task}&top_k=1000", files=_multipart([self.images[i] for i in idx])
                )
            except (httpx.HTTPError, OSError) as e:
                self.lost.append(f"{task}: {type(e).__name__}: {e}")
                continue
            dt = time.perf_counter() - t0
            self.status[r.status_code] += 1
            self.latency_by_status.setdefault(r.status_code, []).append(dt)
            if r.status_code == 503:
                if "retry-after" not in r.headers or r.json()["error"]["code"] != "overloaded":
                    self.retry_after_missing += 1
                continue
            if r.status_code != 200:
                self.mismatched.append(f"{task}: {r.status_code} {r.text[:200]}")
                continue
            self.latencies.append(dt)
            body = r.json()
            preds = body["predictions"]
            bad = body["task"] != task or body["version"] != self.tasks[task] or len(preds) != len(idx)
            if not bad:
                bad = not all(_matches(_scores(p), self.refs[(task, i)]) for p, i in zip(preds, idx, strict=True))
            if bad:
                self.mismatched.append(f"{task} images {idx}: {json.dumps(body)[:300]}")
            else:
                self.images_done += len(idx)

    async def run(self, clients: int, seconds: float, pid: int | None = None) -> dict[str, Any]:
        limits = _limits(clients + 8)
        rss: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, limits=limits) as client:
            if pid is not None:
                rss["start"] = rss_mb(pid)
            start = time.monotonic()
            deadline = start + seconds
            workers = [asyncio.create_task(self.worker(client, deadline)) for _ in range(clients)]
            if pid is not None:
                await asyncio.sleep(seconds / 2)
                rss["middle"] = rss_mb(pid)
            # a bounded wait: each worker stops at the deadline, plus one request's timeout
            await asyncio.wait_for(asyncio.gather(*workers), seconds + self.timeout + 30)
            wall = time.monotonic() - start
            if pid is not None:
                rss["end"] = rss_mb(pid)
        requests = sum(self.status.values()) + len(self.lost)
        return {
            "clients": clients,
            "seconds": round(wall, 2),
            "requests": requests,
            "status": dict(sorted(self.status.items())),
            "errors_5xx": sum(n for s, n in self.status.items() if s >= 500),
            "lost": len(self.lost),
            "mismatched": len(self.mismatched),
            "examples": (self.lost + self.mismatched)[:5],
            "rps": round(self.status[200] / wall, 1),
            "images_per_s": round(self.images_done / wall, 1),
            **_ms(self.latencies),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()},
        }


async def load_run(traffic: Traffic, clients: int, seconds: float, pid: int | None = None) -> dict[str, Any]:
    """N clients for T seconds; zero 5xx, zero lost or mismatched answers."""
    return await Load(traffic).run(clients, seconds, pid)


async def _sequential(traffic: Traffic, n: int) -> tuple[int, list[float]]:
    """``n`` requests one at a time: how many were correct 200s, and their latencies."""
    ok, lat = 0, []
    names, images = sorted(traffic.tasks), traffic.images
    async with httpx.AsyncClient(base_url=traffic.url, timeout=30) as client:
        for i in range(n):
            task, j = names[i % len(names)], i % len(images)
            t0 = time.perf_counter()
            r = await client.post(f"/predict?task={task}&top_k=1000", files=_multipart([images[j]]))
            lat.append(time.perf_counter() - t0)
            if r.status_code == 200 and _matches(_scores(r.json()["predictions"][0]), traffic.refs[(task, j)]):
                ok += 1
    return ok, lat


def _queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("adaptformer_queue_depth "):
            return float(line.split()[1])
    return float("nan")


async def overload_run(traffic: Traffic, clients: int, seconds: float, pid: int | None = None) -> dict[str, Any]:
    """Clients beyond capacity get fast 503s with Retry-After; /healthz answers; full recovery after."""
    url = traffic.url
    ok_before, before = await _sequential(traffic, 10)
    load = Load(traffic, max_images=1, timeout=30)
    health: list[float] = []
    health_failures = 0

    async def probe(deadline: float) -> None:
        nonlocal health_failures
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    r = await client.get("/healthz")
                    health.append(time.perf_counter() - t0)
                    health_failures += r.status_code != 200
                except httpx.HTTPError:
                    health_failures += 1
                await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe(time.monotonic() + seconds))
    result = await load.run(clients, seconds, pid)
    await prober
    await asyncio.sleep(0.5)
    depth = _queue_depth(url)
    ok_after, after = await _sequential(traffic, 20)
    rejected = load.latency_by_status.get(503, [])
    return {
        **result,
        "rejected_503": len(rejected),
        "rejected_without_retry_after": load.retry_after_missing,
        "rejected_latency": _ms(rejected),
        "healthz": {"probes": len(health), "failures": health_failures, **_ms(health)},
        "queue_depth_after": depth,
        "before": {"ok": ok_before, "of": 10, **_ms(before)},
        "after": {"ok": ok_after, "of": 20, **_ms(after)},
    }


def _limits(connections: int) -> httpx.Limits:
    """A pool of ``connections`` that drops a connection idle for 2 s, before the server's keep-alive timeout (5 s)
    closes it: otherwise a request may go out on a connection the server is closing at that moment, a transport
    error that says nothing about the server."""
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0)


# -- hot swap ------------------------------------------------------------------------------------------------------
@dataclass
class _Span:
    """When a version (or a task's absence) held: from the request that made it (sent) to the one that ended it
    (answered); ``None`` = still holds."""

    start: float
    end: float | None = None

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.start <= t1 and (self.end is None or self.end >= t0)


async def hotswap_run(
    url: str,
    kit: Kit,
    images: Sequence[Part],
    clients: int,
    seconds: float,
    *,
    swap_tasks: int = 4,
    versions: int = 12,
    interval: tuple[float, float] = (0.1, 0.2),
    seed: int = 0,
) -> dict[str, Any]:
    """Replace, add and delete every 100-200 ms under load; every answer from exactly one version."""
    rng = random.Random(seed)
    factory = kit.factory(versions)
    # version v of any task makes class v win; the label of an answer names the version of the head that ran
    pool = [f"swap-{i}" for i in range(swap_tasks)]
    files: dict[str, list[bytes]] = {
        name: [factory(name, seed=1000 * k + v, winner=v) for v in range(versions)]
        for k, name in enumerate(pool + [f"new-{j}" for j in range(swap_tasks)])
    }
    winner_of: dict[str, int] = {}  # version hash -> winning class index
    spans: dict[tuple[str, str], list[_Span]] = {}  # (task, version) -> when current
    absent: dict[str, list[_Span]] = {name: [_Span(0.0)] for name in files}  # when a task did not exist
    current: dict[str, str] = {}
    ops: Counter[str] = Counter()
    swap_errors: list[str] = []

    async def put(client: httpx.AsyncClient, name: str) -> None:
        v = rng.randrange(versions)
        t0 = time.monotonic()
        f = {"file": ("a.safetensors", files[name][v], "application/octet-stream")}
        r = await client.post("/adapters", files=f, data={"task": name})
        t1 = time.monotonic()
        if r.status_code != 201:
            swap_errors.append(f"upload {name}: {r.status_code} {r.text[:200]}")
            return
        version = r.json()["adapter"]["version"]
        winner_of[version] = v
        old = current.get(name)
        if old is not None:
            spans[(name, old)][-1].end = t1
        else:
            absent[name][-1].end = t1
        spans.setdefault((name, version), []).append(_Span(t0))
        current[name] = version
        ops["replace" if old else "add"] += 1

    async def delete(client: httpx.AsyncClient, name: str) -> None:
        t0 = time.monotonic()
        r = await client.delete(f"/adapters/{name}")
        t1 = time.monotonic()
        if r.status_code != 200:
            swap_errors.append(f"delete {name}: {r.status_code} {r.text[:200]}")
            return
        spans[(name, current.pop(name))][-1].end = t1
        absent[name].append(_Span(t0))
        ops["delete"] += 1

    answers: Counter[str] = Counter()
    violations: list[str] = []
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient, deadline: float, w: int) -> None:
        names = sorted(files)
        wr = random.Random(seed * 100 + w)
        while time.monotonic() < deadline:
            name = wr.choice(names)
            img = images[wr.randrange(len(images))]
            t0 = time.monotonic()
            try:
                r = await client.post(f"/predict?task={name}&top_k=1", files=_multipart([img]))
            except httpx.HTTPError as e:
                violations.append(f"{name}: lost: {type(e).__name__} {e}")
                continue
            t1 = time.monotonic()
            latencies.append(t1 - t0)
            if r.status_code == 404 and r.json()["error"]["code"] == "not_found":
                if any(s.overlaps(t0, t1) for s in absent[name]):
                    answers["404 (deleted)"] += 1
                else:
                    violations.append(f"{name}: 404 while it existed throughout the request")
                continue
            if r.status_code != 200:
                violations.append(f"{name}: {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            version, label = body["version"], body["predictions"][0][0]["label"]
            expected = f"{name}-{winner_of.get(version, -1)}"
            if body["task"] != name or label != expected:
                violations.append(f"{name}: version {version} answered with label {label} (its head: {expected})")
            elif not any(s.overlaps(t0, t1) for s in spans.get((name, version), [])):
                violations.append(f"{name}: version {version} was not current while the request ran")
            else:
                answers["200"] += 1

    limits = _limits(clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for name in pool:
            await put(client, name)
        start = time.monotonic()
        deadline = start + seconds
        workers = [asyncio.create_task(worker(client, deadline, w)) for w in range(clients)]
        step = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(*interval))
            # replace, add, replace, delete, ...: every kind of swap early on, and tasks come and go
            kind = ("replace", "add", "replace", "delete")[step % 4]
            step += 1
            present = sorted(current)
            missing = sorted(set(files) - set(current))
            if kind == "add" and missing:
                await put(client, rng.choice(missing))
            elif kind == "delete" and len(present) > 1:
                await delete(client, rng.choice(present))
            elif present:
                await put(client, rng.choice(present))
        await asyncio.wait_for(asyncio.gather(*workers), 120)
        wall = time.monotonic() - start
        for name in list(current):  # leave the shared server as it was
            await delete(client, name)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "swaps": dict(ops),
        "swaps_per_s": round(sum(ops.values()) / wall, 1),
        "answers": dict(answers),
        "violations": len(violations),
        "swap_errors": len(swap_errors),
        "examples": (violations + swap_errors)[:5],
        **_ms(latencies),
    }


# -- crash safety --------------------------------------------------------------------------------------------------
def _store_files(store: Path) -> tuple[list[Path], list[Path]]:
    """Adapter files and everything else (besides the version and header caches, the seed marker and the kept versions; temp
    files of interrupted writes among the kept versions count as everything else)."""
    adapters, other = [], []
    for p in sorted(store.iterdir()):
        if p.name.endswith(".safetensors") and not p.name.startswith("."):
            adapters.append(p)
        elif p.name == ".history" and p.is_dir():
            other.extend(sorted(p.glob("*/.*.tmp")))
        elif p.name not in (".index.json", ".seeded"):
            other.append(p)
    return adapters, other


def check_store(store: Path, vit: torch.nn.Module) -> list[str]:
    """Problems with the store: a file that is not a complete adapter that loads on ``vit``."""
    problems = []
    adapters, _ = _store_files(store)
    for p in adapters:
        try:
            af.load_adapter(p, vit)
        except Exception as e:
            problems.append(f"{p.name}: {type(e).__name__}: {e}")
    return problems


def crash_run(
    kit: Kit,
    workdir: Path,
    cycles: int = 2,
    uploaders: int = 4,
    kill_after: tuple[float, float] = (0.4, 1.2),
    seed: int = 0,
    ready_timeout: float = 300,
) -> dict[str, Any]:
    """kill -9 during uploads, restart, check the store and every acknowledged upload."""
    rng = random.Random(seed)
    store = workdir / "crash-store"
    store.mkdir(parents=True, exist_ok=True)
    factory = kit.factory(6, bottleneck=64)  # ~0.4 MB files: the write takes a moment
    acked: dict[str, tuple[str, int]] = {}  # task -> (version, winner) acknowledged by a 201
    in_flight_after_ack: dict[str, set[str]] = {}  # task -> versions sent after its last ack (may or may not land)
    versions_of: dict[str, int] = {}  # version -> winner
    report: dict[str, Any] = {"cycles": [], "problems": []}
    counter = 0
    for _cycle in range(cycles):
        server = Server(kit.weights, store, workdir / "crash-server.log", ready_timeout=ready_timeout)
        sent = Counter[str]()

        async def uploader(w: int, server: Server = server, sent: Counter = sent, first: Any = None) -> None:
            nonlocal counter
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                deadline = time.monotonic() + 120
                i = 0
                while time.monotonic() < deadline and i < 200:  # bounded; the kill ends it first
                    counter += 1
                    # half new tasks, half replacements of a few fixed names
                    name = f"u{w}-{counter}" if i % 2 == 0 else f"fixed-{w}"
                    winner = counter % 6
                    data = factory(name, seed=counter, winner=winner)
                    version = _version(data)
                    versions_of[version] = winner
                    in_flight_after_ack.setdefault(name, set()).add(version)
                    sent["sent"] += 1
                    try:
                        r = await client.post(
                            "/adapters", files={"file": ("a.safetensors", data, "application/octet-stream")}
                        )
                    except httpx.HTTPError:
                        return  # the server died under us
                    if r.status_code == 201:
                        assert r.json()["adapter"]["version"] == version
                        acked[name] = (version, winner)
                        in_flight_after_ack[name] = set()
                        sent["acked"] += 1
                        first.set()
                    i += 1

        async def killer(server: Server = server, first: Any = None) -> None:
            # kill at a random moment after the first acknowledgement (so that there is something to check)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(first.wait(), 120)
            await asyncio.sleep(rng.uniform(*kill_after))
            server.kill9()

        async def run_cycle() -> None:
            first = asyncio.Event()
            await asyncio.gather(killer(first=first), *(uploader(w, first=first) for w in range(uploaders)))

        asyncio.run(run_cycle())
        _, leftovers = _store_files(store)
        problems = check_store(store, kit.vit)
        # restart on the same store
        server = Server(kit.weights, store, workdir / "crash-server.log", ready_timeout=ready_timeout)
        try:
            _, after_restart = _store_files(store)
            listed = {
                a["task"]: a["version"] for a in httpx.get(f"{server.url}/adapters", timeout=30).json()["adapters"]
            }
            served = 0
            for name, (version, _winner) in sorted(acked.items()):
                ok_versions = {version} | in_flight_after_ack.get(name, set())
                if listed.get(name) not in ok_versions:
                    problems.append(f"{name}: acknowledged {version}, served {listed.get(name)}")
                    continue
                r = httpx.post(
                    f"{server.url}/predict?task={name}&top_k=1", files=_multipart([make_images(1)[0]]), timeout=30
                )
                if r.status_code != 200 or r.json()["version"] not in ok_versions:
                    problems.append(f"{name}: predict {r.status_code} {r.text[:200]}")
                    continue
                got = r.json()["version"]
                if r.json()["predictions"][0][0]["label"] != f"{name}-{versions_of[got]}":
                    problems.append(f"{name}: version {got} answered with another head")
                    continue
                served += 1
                if got == version:
                    continue
                acked[name] = (got, versions_of[got])  # an upload in flight at the kill landed: now the current one
            unlisted = sorted(set(listed) - {p.name[: -len(".safetensors")] for p in _store_files(store)[0]})
            if unlisted:
                problems.append(f"listed but not in the store: {unlisted}")
            for name in listed:  # the store now holds exactly what is served
                version = listed[name]
                if name not in acked:
                    acked[name] = (version, versions_of.get(version, -1))
                in_flight_after_ack[name] = set()
        finally:
            server.close()
        report["cycles"].append(
            {
                "uploads_sent": sent["sent"],
                "acknowledged": sent["acked"],
                "leftover_temp_files_at_kill": len(leftovers),
                "temp_files_after_restart": len(after_restart),
                "adapters_in_store": len(listed),
                "acknowledged_served": served,
                "restart_ready_s": round(server.ready_s, 2),
            }
        )
        if after_restart:
            problems.append(f"left after restart: {[p.name for p in after_restart]}")
        report["problems"].extend(problems)
    return report


def _version(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:12]


# -- the command ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="adaptformer-rel-") as d:
            yield Path(d)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test-suite sizes: 16 clients, 5 s")
    parser.add_argument("--clients", type=int, default=None, help="load clients (default 64; quick 16)")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (default 60; quick 5)")
    parser.add_argument("--images", type=int, default=None, help="distinct images (default 32; quick 9)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["load", "overload", "hotswap", "crash"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    clients = args.clients or (16 if args.quick else 64)
    seconds = args.seconds or (5.0 if args.quick else 60.0)
    n_images = args.images or (9 if args.quick else 32)
    results: dict[str, Any] = {
        "command": "python -m benchmarks.reliability " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
        "torch": torch.__version__,
    }

    def show(name: str, value: Any) -> None:
        results[name] = value
        print(f"{name}: {json.dumps(value)}", flush=True)

    with _workdir(args.workdir) as work:
        kit = build_kit(work)
        images = make_images(n_images)
        if not {"load", "hotswap"} <= set(args.skip):
            with Server(kit.weights, work / "store", work / "server.log") as server:
                tasks = upload_all(server.url, kit.tasks)
                refs = asyncio.run(references(server.url, tasks, images))
                if "load" not in args.skip:
                    traffic = Traffic(server.url, tasks, images, refs)
                    show("load", asyncio.run(load_run(traffic, clients, seconds, server.pid)))
                if "hotswap" not in args.skip:
                    hs = asyncio.run(hotswap_run(server.url, kit, images, min(clients, 16), min(seconds, 20.0)))
                    show("hotswap", hs)
                results["server_alive"] = server.alive()
        if "overload" not in args.skip:
            store = work / "store-overload"
            settings = {"queue_size": 8, "max_batch_size": 64, "max_wait_ms": 100}
            with Server(kit.weights, store, work / "server-overload.log", **settings) as server:
                tasks = upload_all(server.url, kit.tasks)
                refs = asyncio.run(references(server.url, tasks, images[:4]))
                traffic = Traffic(server.url, tasks, images[:4], refs)
                over = asyncio.run(overload_run(traffic, 32, min(seconds, 10.0), server.pid))
                show("overload", {"settings": settings, **over})
        if "crash" not in args.skip:
            show("crash", crash_run(kit, work, cycles=2 if args.quick else 5))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
