"""The store at scale: 10,000 registered adapters in one store against a store of 4, each a real server process.

    python -m benchmarks.store_scale                               # 10,000 adapters (a few minutes)
    python -m benchmarks.store_scale --tasks 2000 --idle-s 20      # a quicker run
    python -m benchmarks.store_scale --out docs/benchmarks/store_scale --note "..."

Measures:

1. time to ready (process start to ``/readyz`` 200): first start (a store no server read before: no caches) and
   restarts (the index ``.index.json`` in place), next to a server on a store of 4 adapters;
2. idle CPU of the two servers side by side in the same window (no requests; the store watcher polls every
   500 ms): CPU seconds from ``/proc`` over ``--idle-s``, as a percentage of one core;
3. page-in: requests to tasks not resident (cold: the adapter is read from the store and paged in), then twice
   again (warm), p50 and p99;
4. ``GET /adapters``: the first page (``limit`` 100 and 500: the client's page) and, for scale, the whole list
   without paging (its size too).

Head-only adapters (linear probes, 10 classes) on the embedded backbone; the server runs with its defaults
(32 slots, ``store_poll_ms`` 500). Load generator and servers share the machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

import adaptformer as af
from adaptformer.adapter_file import task_to_bytes
from adaptformer.preprocess import spec_from_model
from adaptformer_server.backbone import build_engine, load_backbone
from adaptformer_server.settings import Settings
from benchmarks.machine import cpu_model
from tests.support import ServerProcess, png


def make_store(root: Path, n: int, seed: int = 0) -> None:
    """``n`` head-only adapters ``task00000``.. on the embedded backbone, each with its own weights."""
    root.mkdir(parents=True, exist_ok=True)
    vit, _ = load_backbone(Settings(backbone="embedded"))
    model = copy.deepcopy(vit)
    af.linear_probe(model, 10)
    task = af.extract_task(model, "t", labels=[f"class{i}" for i in range(10)], input_spec=spec_from_model(vit))
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        task.info.task = f"task{i:05d}"
        with torch.no_grad():
            task.head.weight.copy_(torch.randn(task.head.weight.shape, generator=g) * 0.02)
        (root / f"task{i:05d}.safetensors").write_bytes(task_to_bytes(task))


def server(store: Path, log: Path) -> ServerProcess:
    """A server on ``store`` (its log appended to ``log``), ready; ``ready_s``: spawn to /readyz 200, ``ready_cpu_s``:
    the CPU the process used to get ready (less at the mercy of other jobs)."""
    flags = ["--store", store, "--no-seed-demo", "--log-level", "warning"]
    return ServerProcess(flags, log=log, ready_timeout=600, interval=0.05)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def page_ins(url: str, tasks: list[str]) -> dict:
    payload, cold, warm = png(0, 224), [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for task in tasks:
            for bucket in (cold, warm, warm):
                t0 = time.perf_counter()
                r = client.post(f"/predict?task={task}", content=payload, headers={"Content-Type": "image/png"})
                bucket.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, r.text
    return {
        "requests": len(tasks),
        "cold_p50_ms": statistics.median(cold),
        "cold_p99_ms": pct(cold, 0.99),
        "warm_p50_ms": statistics.median(warm),
        "warm_p99_ms": pct(warm, 0.99),
    }


def listing(url: str, repeats: int) -> dict:
    out: dict = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, params in [("first_page_100", {"limit": 100}), ("first_page_500", {"limit": 500}), ("all", {})]:
            times, size = [], 0
            for _ in range(repeats if params else max(1, repeats // 5)):
                t0 = time.perf_counter()
                r = client.get("/adapters", params=params)
                times.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, r.text
                size = len(r.content)
            out[name] = {"p50_ms": statistics.median(times), "max_ms": max(times), "bytes": size, "n": len(times)}
    return out


def store_start(root: Path) -> dict:
    """The store's share of start-up, timed in this process as the server does it: scan (headers read and
    checked, or taken from the caches), the backbone fit check of every file, the registry filled."""
    from adaptformer_server.repository.layout import AdapterStore
    from adaptformer_server.repository.registry import Registry

    _, info = build_engine(Settings(backbone="embedded", seed_demo=False))
    out = {}
    for name in ("first", "restart"):
        t0 = time.perf_counter()
        found, _ = AdapterStore(root).scan_stamped()
        registry = Registry()
        for f in found:
            info.check_header(f.header, f"{f.task}.safetensors")
            registry.put(f)
        out[name] = time.perf_counter() - t0
    return out


def run(args: argparse.Namespace, work: Path) -> dict:
    big, small = work / "big", work / "small"
    t0 = time.perf_counter()
    make_store(big, args.tasks)
    make_store(small, 4, seed=1)
    made_s = time.perf_counter() - t0
    log = work / "servers.log"
    result: dict = {"tasks": args.tasks, "store_made_s": made_s}

    result["store_start_s"] = store_start(big)
    (big / ".index.json").unlink()
    first = server(big, log)  # no caches yet: every header read and checked, every file hashed
    result["ready_first_start_s"], result["ready_first_start_cpu_s"] = first.ready_s, first.ready_cpu_s
    first.close()
    restarts, restarts_cpu = [], []
    for _ in range(args.restarts):
        s = server(big, log)
        restarts.append(s.ready_s)
        restarts_cpu.append(s.ready_cpu_s)
        s.close()
    result["ready_restart_s"], result["ready_restart_cpu_s"] = restarts, restarts_cpu

    big_server, small_server = server(big, log), server(small, log)
    result["ready_restart_s"].append(big_server.ready_s)
    result["ready_restart_cpu_s"].append(big_server.ready_cpu_s)
    result["ready_small_s"], result["ready_small_cpu_s"] = small_server.ready_s, small_server.ready_cpu_s
    try:
        time.sleep(5)  # past start-up (the caches just written make the directory young for 2 s)
        before = (big_server.cpu_s(), small_server.cpu_s(), time.perf_counter())
        time.sleep(args.idle_s)
        after = (big_server.cpu_s(), small_server.cpu_s(), time.perf_counter())
        wall = after[2] - before[2]
        result["idle"] = {
            "window_s": wall,
            "cpu_percent_big": 100 * (after[0] - before[0]) / wall,
            "cpu_percent_small": 100 * (after[1] - before[1]) / wall,
            "clock_tick_s": 1 / os.sysconf("SC_CLK_TCK"),
        }
        rng = random.Random(0)
        tasks = rng.sample([f"task{i:05d}" for i in range(args.tasks)], min(args.page_ins, args.tasks))
        result["page_in"] = page_ins(big_server.url, tasks)
        result["list"] = listing(big_server.url, args.list_repeats)
    finally:
        big_server.close()
        small_server.close()
    return result


def render(r: dict) -> str:
    idle, page, lst = r["idle"], r["page_in"], r["list"]
    restarts = ", ".join(f"{s:.1f}" for s in r["ready_restart_s"])
    restarts_cpu = ", ".join(f"{s:.1f}" for s in r["ready_restart_cpu_s"])
    store = r["store_start_s"]
    lines = [
        f"# Store at scale: {r['tasks']:,} registered adapters",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}; machine: {r['machine']} ({r['cpus']} cores), load average at the start "
        f"{r['load_average']}; {r['note'] or 'a shared machine: other jobs ran at the same time'}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| ready, first start (no caches) | {r['ready_first_start_s']:.1f} s ({r['ready_first_start_cpu_s']:.1f} CPU s) |",
        f"| ready, restarts | {restarts} s (median {statistics.median(r['ready_restart_s']):.1f} s); "
        f"CPU {restarts_cpu} s |",
        f"| ready, a store of 4 adapters (with the last restart) | {r['ready_small_s']:.1f} s "
        f"({r['ready_small_cpu_s']:.1f} CPU s) |",
        f"| the store's part of start-up (in-process: scan, fit checks, registry), first / restart "
        f"| {store['first']:.2f} / {store['restart']:.2f} s |",
        f"| idle CPU, {r['tasks']:,} adapters | {idle['cpu_percent_big']:.2f}% of a core |",
        f"| idle CPU, 4 adapters (same window) | {idle['cpu_percent_small']:.2f}% of a core |",
        f"| page-in cold p50 / p99 ({page['requests']} tasks) | {page['cold_p50_ms']:.1f} / {page['cold_p99_ms']:.1f} ms |",
        f"| page-in warm p50 / p99 | {page['warm_p50_ms']:.1f} / {page['warm_p99_ms']:.1f} ms |",
    ]
    for name, label in [
        ("first_page_100", "`GET /adapters?limit=100`"),
        ("first_page_500", "`GET /adapters?limit=500`"),
    ]:
        v = lst[name]
        lines.append(f"| {label} p50 (max) | {v['p50_ms']:.1f} ms ({v['max_ms']:.1f} ms), {v['bytes']:,} bytes |")
    v = lst["all"]
    lines.append(f"| `GET /adapters` (everything, unpaged) p50 | {v['p50_ms']:.0f} ms, {v['bytes']:,} bytes |")
    lines += [
        "",
        f"Idle window {idle['window_s']:.0f} s, both servers side by side, no requests; CPU from /proc "
        f"(resolution {idle['clock_tick_s'] * 1000:.0f} ms a reading). Ready: process start to `/readyz` 200 "
        "(Python and torch imports, the backbone, the store, a warm-up pass); CPU s: the server process's user + "
        "system time when it became ready (wall time waits for other jobs on a loaded machine, CPU time less so).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--restarts", type=int, default=2, help="restarts timed alone (one more starts the idle run)")
    p.add_argument("--idle-s", type=float, default=60.0)
    p.add_argument("--page-ins", type=int, default=200)
    p.add_argument("--list-repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    p.add_argument("--note", default="")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="store-scale-", dir=args.workdir))
    try:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        r = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r.update(
        command="python -m benchmarks.store_scale " + shlex.join(argv if argv is not None else sys.argv[1:]),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=cpu_model(),
        cpus=os.cpu_count(),
        load_average=load,
        note=args.note,
    )
    text = render(r)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
