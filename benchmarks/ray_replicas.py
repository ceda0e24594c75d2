"""Ray Serve replicas: throughput with 1 and 2 replicas, and how fast a store change reaches every replica.

    python benchmarks/ray_replicas.py                      # writes docs/benchmarks/ray_replicas.{json,md}
    python benchmarks/ray_replicas.py --duration 5 --quick # a smoke run, nothing written

Needs the ray extra (``pip install '.[ray]'``). Starts a Ray cluster on 127.0.0.1 (tests/ray/ray_support.py:
loopback only, stopped at the end) and, one after the other, on one shared store with the embedded backbone and
its demo adapters:

- ``plain``: ``adaptformer serve --threads 2`` without Ray (the reference);
- ``ray 1x2``: ``--ray --replicas 1 --cpus-per-replica 2`` (one replica, 2 torch threads);
- ``ray 1x1``: ``--ray --replicas 1 --cpus-per-replica 1``;
- ``ray 2x1``: ``--ray --replicas 2 --cpus-per-replica 1`` (two replicas, one thread each).

Each gets ``--clients`` concurrent closed-loop clients (one 28x28 image per request, tasks digits, emoji and
fashion in turn) for ``--duration`` seconds after a warm-up. Then, on ``ray 2x1``, an upload, a replace and a
delete through the proxy, each followed by 3 s of predictions that show when each replica served the change.

The load generator runs on the same machine: on a 2-core host it, Ray's proxy and the replicas share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ray"))
sys.path.insert(0, str(ROOT))

from ray_support import (  # noqa: E402
    REPLICA_HEADER,
    demo_file,
    free_port,
    interfaces,
    observe,
    png,
    propagation,
    ray_cluster,
    ray_server,
)

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.process import wait_ready  # noqa: E402

TASKS = ("digits", "emoji", "fashion")
CONFIGS = {
    "ray 1x2": ("--replicas", "1", "--cpus-per-replica", "2"),
    "ray 1x1": ("--replicas", "1", "--cpus-per-replica", "1"),
    "ray 2x1": ("--replicas", "2", "--cpus-per-replica", "1"),
}


async def load(url: str, clients: int, duration: float, warmup: float) -> dict:
    """Closed-loop load: ``clients`` loops, each sending its next request when the last one answered."""
    images = [png(i) for i in range(64)]
    latencies: list[float] = []
    replicas: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + duration

        async def loop(i: int) -> None:
            n = 0
            while (t0 := time.perf_counter()) < end:
                n += 1
                task = TASKS[(i + n) % len(TASKS)]
                files = {"image": ("x.png", images[(i * 7 + n) % len(images)], "image/png")}
                try:
                    r = await c.post(f"/predict?task={task}", files=files)
                    status = str(r.status_code)
                except httpx.TransportError as e:
                    r, status = None, type(e).__name__
                t1 = time.perf_counter()
                if t0 < measure_from or t1 > end:
                    continue
                if status == "200" and r is not None:
                    latencies.append(t1 - t0)
                    replicas[r.headers.get(REPLICA_HEADER, "?")] += 1
                else:
                    errors[status] += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else 0.0

    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / duration, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0,
        "errors": dict(errors),
        "per_replica": sorted(replicas.values(), reverse=True),
    }


def plain_server(store: Path, env: dict[str, str], log: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "adaptformer_server", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store", str(store), "--threads", "2", "--log-level", "warning"]  # fmt: skip
    out = log.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, interval=0.5)
    except AssertionError:
        proc.kill()
        raise SystemExit(f"the plain server did not get ready:\n{log.read_text()[-3000:]}") from None
    return url, proc, out


async def store_changes(url: str) -> dict:
    """Upload, replace, delete of task ``probe`` through the proxy; per replica, when each served the change."""
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        up = await c.post("/adapters", files={"file": ("a.safetensors", demo_file("digits"))}, data={"task": "probe"})
        v1 = up.json()["adapter"]["version"]
        out["upload"] = propagation(await observe(c, "probe", 3.0), lambda s, v: s == 200 and v == v1)
        up = await c.post("/adapters", files={"file": ("a.safetensors", demo_file("emoji"))}, data={"task": "probe"})
        v2 = up.json()["adapter"]["version"]
        out["replace"] = propagation(await observe(c, "probe", 3.0), lambda s, v: s == 200 and v == v2)
        await c.delete("/adapters/probe")
        out["delete"] = propagation(await observe(c, "probe", 3.0), lambda s, v: s == 404)
    # replica names differ per run: keep them in order of appearance as "replica 1", "replica 2"
    return {change: {f"replica {i + 1}": r for i, r in enumerate(per.values())} for change, per in out.items()}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Ray Serve replicas: throughput and store propagation",
        "",
        f"`python benchmarks/ray_replicas.py` on {result['date']}: {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gb']} GB, load average {m['load_before']} before and {m['load_after']} after; Ray "
        f"{result['versions']['ray']}, torch {result['versions']['torch']}; network interfaces: "
        f"{', '.join(m['interfaces'])}. Backbone: the embedded ViT (28x28), demo adapters, "
        f"{result['clients']} closed-loop clients, one image per request, tasks digits/emoji/fashion in turn, "
        f"{result['duration_s']} s measured after {result['warmup_s']} s of warm-up. The load generator runs on "
        "the same machine.",
        "",
        "| setup | replicas x torch threads | requests/s | p50 ms | p95 ms | p99 ms | errors | answers per replica |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for name, r in result["runs"].items():
        shape = {"plain": "1 x 2 (no Ray)", "ray 1x2": "1 x 2", "ray 1x1": "1 x 1", "ray 2x1": "2 x 1"}[name]
        lines.append(
            f"| {name} | {shape} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['errors'] or 0} | {', '.join(map(str, r['per_replica']))} |"
        )
    runs = result["runs"]
    if "ray 1x1" in runs and "ray 2x1" in runs and runs["ray 1x1"]["rps"]:
        ratio = runs["ray 2x1"]["rps"] / runs["ray 1x1"]["rps"]
        lines += ["", f"2 replicas / 1 replica (one thread each): **{ratio:.2f}x**."]
    lines += [
        "",
        "## A store change reaching every replica (ray 2x1)",
        "",
        "After each change returned to the client, 6 clients sent predictions for 3 s. `fresh by`: when the "
        "replica's first answer showing the change arrived (it had the change by then); `last stale`: when its "
        "last answer not showing it was sent. Seconds after the change returned.",
        "",
        "| change | replica | fresh by (s) | last stale (s) | answers | stale after fresh |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for change, per in result.get("store_changes", {}).items():
        for replica, r in per.items():
            lines.append(
                f"| {change} | {replica} | {r['fresh_by_s']} | {r['last_stale_s']} | {r['answers']} | "
                f"{r['stale_after_fresh']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per setup")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="write nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "ray_replicas")
    args = parser.parse_args()

    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "versions": {p: metadata.version(p) for p in ("ray", "torch")},
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_before": round(os.getloadavg()[0], 2),
            "interfaces": interfaces(),
        },
        "runs": {},
    }
    with TemporaryDirectory() as tmp, ray_cluster() as cluster:
        store = Path(tmp) / "adapters"
        url, proc, out = plain_server(store, cluster.env, Path(tmp) / "plain.log")
        try:
            result["runs"]["plain"] = r = asyncio.run(load(url, args.clients, args.duration, args.warmup))
            print("plain", r, flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            out.close()
        for name, flags in CONFIGS.items():
            with ray_server(cluster, store, "--max-wait-ms", "5", *flags) as server:
                result["runs"][name] = r = asyncio.run(load(server.url, args.clients, args.duration, args.warmup))
                print(name, r, flush=True)
                if name == "ray 2x1":
                    result["store_changes"] = asyncio.run(store_changes(server.url))
                    print(json.dumps(result["store_changes"], indent=1), flush=True)
    result["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
        print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
