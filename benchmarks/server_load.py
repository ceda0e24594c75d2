"""Server load benchmark: throughput and latency vs concurrency, batching on and off, against the engine alone.

    python -m benchmarks.server_load --quick                 # a smoke run (about a minute or two on a CPU)
    python -m benchmarks.server_load --out docs/benchmarks/server_load.md
    python -m benchmarks.server_load --backbone vit_base_patch16_224.augreg2_in21k_ft_in1k --weights vit.pth --device cuda

Measures, each against a real ``python -m adaptformer_server`` process on loopback:

1. throughput (requests/s, one image each, tasks mixed over 16 adapters) and p50/p99 latency for concurrency
   1..64, with batching on (max batch 32, max wait 5 ms) and off (max batch 1);
2. saturation: the best server throughput next to the engine alone (MultiTaskViT, batches of 32 mixing 16
   tasks), measured as the engine benchmark does (benchmarks/engine_throughput.py: runs interleaved with the plain
   backbone's ``forward_features`` on the same batch, medians over repetitions, the ratio the median of the paired
   ratios), i.e. what HTTP, decoding and batching cost;
3. upload-to-servable: POST /adapters until it returns, and until the first prediction with it returns;
4. page-in: with 1,000 registered adapters and 32 slots, time to ready, and first-request (cold, paged in)
   against repeated (warm) latency.

The load generator runs in this process (asyncio + httpx) on the same machine as the server, so on a small CPU
both compete for cores: read the numbers as a lower bound of what the server does alone.
Without --weights, the embedded architecture gets random weights (speed does not depend on their values).
The report's header (command, date, machine, load average at the start, --note) is written from the run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from adaptformer.engine import MultiTaskViT
from adaptformer_server.backbone import load_backbone, resolve_device
from adaptformer_server.settings import Settings
from benchmarks import engine_throughput as bench
from benchmarks.machine import cpu_model, finish, table, write_report
from tests.support import ServerProcess, adapter_bytes, embedded_backbone, png

TASKS = 16


# -- set-up ----------------------------------------------------------------------------------------------------
def backbone_for(args: argparse.Namespace, workdir: Path) -> tuple[torch.nn.Module, Path | None]:
    """The backbone (to build adapters on) and the weights file the server gets."""
    if args.weights is None and args.backbone == "embedded":
        args.weights = workdir / "backbone.safetensors"
        embedded_backbone(args.weights, seed=0)
    vit, _ = load_backbone(Settings(backbone=args.backbone, weights=args.weights))
    return vit, args.weights


def random_backbone(name: str, workdir: Path) -> tuple[torch.nn.Module, Path, list[object]]:
    """``embedded`` or a timm ViT with random weights, saved as ``workdir/backbone.safetensors``: the model (to
    build adapters on), the weights file and the server flags that serve it."""
    weights = workdir / "backbone.safetensors"
    if name == "embedded":
        return embedded_backbone(weights, seed=0), weights, ["--weights", weights]
    import timm
    from safetensors.torch import save_file

    vit = timm.create_model(name, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, weights)
    vit, _ = load_backbone(Settings(backbone=name, weights=weights))
    return vit, weights, ["--backbone", name, "--weights", weights]


def adapter_file(vit: torch.nn.Module, name: str, bottleneck: int, seed: int) -> bytes:
    """A 10-class adapter file on ``vit`` with small random weights (:func:`tests.support.adapter_bytes`)."""
    if not getattr(vit, "pretrained_cfg", None):
        vit.pretrained_cfg = {"architecture": "benchmark-vit"}
    labels = [str(i) for i in range(10)]
    return adapter_bytes(vit, name, num_classes=10, bottleneck=bottleneck, seed=seed, scale=0.02, labels=labels)


def task_store(store: Path, vit: torch.nn.Module, bottleneck: int, tasks: int = TASKS) -> list[str]:
    """Makes the folder ``store`` with ``tasks`` adapter files ``task0``, ``task1``... (:func:`adapter_file`, seeded
    by their index); returns their names."""
    store.mkdir()
    names = [f"task{i}" for i in range(tasks)]
    for i, name in enumerate(names):
        (store / f"{name}.safetensors").write_bytes(adapter_file(vit, name, bottleneck, seed=i))
    return names


def images(n: int, size: int) -> list[bytes]:
    return [png(i, size) for i in range(n)]


class Server(ServerProcess):
    """A ``python -m adaptformer_server`` process (:class:`tests.support.ServerProcess`); ``ready_s`` is the time
    from spawn to /readyz 200."""

    def __init__(self, args: argparse.Namespace, store: Path, **settings: object) -> None:
        flags: list[object] = ["--backbone", args.backbone, "--store", store, "--no-seed-demo"]
        flags += ["--log-level", "warning", "--device", args.device]
        if args.weights is not None:
            flags += ["--weights", args.weights]
        for key, value in settings.items():
            flag = key.replace("_", "-")
            flags += [f"--{'' if value else 'no-'}{flag}"] if isinstance(value, bool) else [f"--{flag}", value]
        super().__init__(flags, ready_timeout=600, interval=0.1)


# -- measurements ------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def load(url: str, concurrency: int, seconds: float, payloads: list[bytes], tasks: list[str]) -> dict:
    """Closed-loop load: ``concurrency`` clients, each sending its next request when the last one returns."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(w: int, until: float, record: bool) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                if not tasks:  # the generator's own ceiling: a route that does nothing
                    r = await client.get("/healthz")
                else:
                    r = await client.post(
                        f"/predict?task={tasks[i % len(tasks)]}&top_k=1",
                        content=payloads[i % len(payloads)],
                        headers={"Content-Type": "image/png"},
                    )
                if record:
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1
                i += concurrency

        warm = time.perf_counter() + min(1.0, seconds / 3)
        await asyncio.gather(*(worker(w, warm, False) for w in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, start + seconds, True) for w in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * pct(latencies, 0.50),
        "p99_ms": 1000 * pct(latencies, 0.99),
    }


def batch_sizes(url: str) -> float:
    """Mean batch size so far, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("adaptformer_batch_size_sum", "adaptformer_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("adaptformer_batch_size_count", 0.0)
    return values.get("adaptformer_batch_size_sum", 0.0) / count if count else float("nan")


def batch_totals(url: str) -> tuple[float, float]:
    """(sum, count) of the batch-size histogram so far: the mean batch of one load level is the difference."""
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(("adaptformer_batch_size_sum", "adaptformer_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("adaptformer_batch_size_sum", 0.0), values.get("adaptformer_batch_size_count", 0.0)


_WRK_SCRIPT = """
local bodies, tasks, i = {}, {}, 0
local ctype = "image/png"
function init(args)
  local dir, n, t = args[1], tonumber(args[2]), tonumber(args[3])
  if args[4] then ctype = args[4] end
  for k = 0, n - 1 do
    local f = assert(io.open(dir .. "/payload" .. k, "rb"))
    bodies[k + 1] = f:read("*a")
    f:close()
  end
  for k = 0, t - 1 do tasks[k + 1] = "task" .. k end
  i = math.random(0, 1000)
end
function request()
  i = i + 1
  if #tasks == 0 then return wrk.format("GET", "/healthz") end
  return wrk.format("POST", "/predict?task=" .. tasks[(i % #tasks) + 1] .. "&top_k=1",
    {["Content-Type"] = ctype}, bodies[(i % #bodies) + 1])
end
"""


def _wrk_ms(text: str, label: str) -> float:
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == [label] and len(parts) >= 2:
            value = parts[1]
            for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
                if value.endswith(unit):
                    return float(value[: -len(unit)]) * scale
    return float("nan")


def wrk_load(
    url: str,
    concurrency: int,
    seconds: float,
    payloads: list[bytes],
    tasks: list[str],
    content_type: str = "image/png",
) -> dict:
    """Closed-loop load from wrk (one thread, ``concurrency`` connections); ``tasks`` empty: GET /healthz.

    Its CPU use is that of the child process (``generator_cpu``: cores used on average while it ran).
    """
    with tempfile.TemporaryDirectory(prefix="adaptformer-wrk-") as tmp:
        for k, data in enumerate(payloads):
            (Path(tmp) / f"payload{k}").write_bytes(data)
        script = Path(tmp) / "load.lua"
        script.write_text(_WRK_SCRIPT)
        cmd = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "120s",
            "-s",
            str(script),
        ]
        cmd += [url, "--", tmp, str(len(payloads)), str(len(tasks)), content_type]
        warm = [*cmd[:3], f"-d{max(1, int(seconds // 3))}s", *cmd[4:]]
        subprocess.run(warm, check=True, capture_output=True)
        before = os.times()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    wall = after.elapsed - before.elapsed
    rps = next(float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec:"))
    errors = 0
    for line in out.splitlines():
        if "Non-2xx" in line:
            errors += int(line.split()[-1])
        if line.strip().startswith("Socket errors:"):
            errors += sum(int(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
    return {
        "concurrency": concurrency,
        "requests": round(rps * seconds),
        "errors": errors,
        "rps": rps,
        "p50_ms": _wrk_ms(out, "50%"),
        "p99_ms": _wrk_ms(out, "99%"),
        "generator_cpu": round(cpu / wall, 3),
    }


def httpx_load(url: str, concurrency: int, seconds: float, payloads: list[bytes], tasks: list[str]) -> dict:
    """:func:`load` run in this process; ``generator_cpu``: this process's cores used while it ran."""
    before = time.process_time(), time.perf_counter()
    row = asyncio.run(load(url, concurrency, seconds, payloads, tasks))
    row["generator_cpu"] = round((time.process_time() - before[0]) / (time.perf_counter() - before[1]), 3)
    return row


def measured(
    tool: str, server: Server, concurrency: int, seconds: float, payloads: list[bytes], tasks: list[str]
) -> dict:
    """One load level with ``tool``, with the server's CPU use and mean batch size over the level."""
    run = wrk_load if tool == "wrk" else httpx_load
    batches, cpu, t0 = batch_totals(server.url), server.cpu_s(), time.perf_counter()
    row = run(server.url, concurrency, seconds, payloads, tasks)
    server_cpu = (server.cpu_s() - cpu) / (time.perf_counter() - t0)
    after = batch_totals(server.url)
    count = after[1] - batches[1]
    row["server_cpu"] = round(server_cpu, 3)
    row["mean_batch"] = round((after[0] - batches[0]) / count, 2) if count else float("nan")
    return row


def engine_alone(vit: torch.nn.Module, device: str, bottleneck: int, batch: int, reps: int) -> dict:
    """MultiTaskViT on batches of ``batch`` rows mixing ``TASKS`` tasks of width ``bottleneck``, timed interleaved
    with the plain backbone on the same batch and weights (``benchmarks.engine_throughput.measure``)."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    backbone = copy.deepcopy(vit).to(dev, dtype).eval()
    backbone.requires_grad_(False)
    engine = MultiTaskViT(backbone)  # shares the backbone: baseline and engine run the very same weights
    size = backbone.patch_embed.img_size[0]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev, dtype)
    settings = bench.Settings(batch=batch, warmup=2, reps=reps, iters=20 if cuda else 1, clock="wall")
    row = bench.Row(f"engine-{TASKS}x{bottleneck}", f"engine, {TASKS} tasks mixed", "engine", TASKS, bottleneck)
    result = bench.measure(row, backbone, engine, x, settings, dev)
    return result | {"batch": batch, "reps": reps, "iters": settings.iters, "dtype": str(dtype).removeprefix("torch.")}


async def upload_to_servable(url: str, files: list[bytes], payload: bytes) -> list[dict]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i, data in enumerate(files):
            name = f"fresh{i}"
            t0 = time.perf_counter()
            r = await client.post("/adapters", files={"file": ("a.safetensors", data)}, data={"task": name})
            uploaded = time.perf_counter() - t0
            assert r.status_code == 201, r.text
            r = await client.post(f"/predict?task={name}", content=payload, headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            out.append({"upload_ms": 1000 * uploaded, "servable_ms": 1000 * (time.perf_counter() - t0)})
    return out


async def page_in(url: str, tasks: list[str], payload: bytes) -> dict:
    cold, warm = [], []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for task in tasks:
            for bucket in (cold, warm, warm):
                t0 = time.perf_counter()
                r = await client.post(f"/predict?task={task}", content=payload, headers={"Content-Type": "image/png"})
                bucket.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    return {
        "cold_p50_ms": 1000 * statistics.median(cold),
        "cold_p99_ms": 1000 * pct(cold, 0.99),
        "warm_p50_ms": 1000 * statistics.median(warm),
    }


# -- report ----------------------------------------------------------------------------------------------------
def records(rows: list[dict], columns: list[str]) -> str:
    """The ``columns`` of result records as a Markdown table."""
    return "\n".join(table(columns, ([r[c] for c in columns] for r in rows), left=0))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few levels, short runs, 200 adapters (a smoke run)")
    p.add_argument("--backbone", default="embedded")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--bottleneck", type=int, default=None, help="adapter width d^ (default 64; 8 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per load level")
    p.add_argument("--registered", type=int, default=None, help="adapters registered for the page-in test")
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--reps", type=int, default=None, help="engine-alone repetitions (default 7; 3 with --quick)")
    p.add_argument("--out", type=Path, default=None, help="also write the report (markdown) and its JSON here")
    p.add_argument("--note", default="", help="free text for the report (e.g. other load on the machine)")
    p.add_argument(
        "--saturation",
        action="store_true",
        help="only the saturation rounds (server on/off at --clients, engine alone), written as server_saturation",
    )
    p.add_argument("--rounds", type=int, default=3, help="saturation rounds (medians over them)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of the server and of the engine alone (default: torch's choice); on a loaded "
        "machine OpenMP threads that wait for a descheduled sibling make 1 the fastest",
    )
    p.add_argument("--clients", type=int, default=32, help="clients of the saturation rounds")
    p.add_argument(
        "--tool", choices=["httpx", "wrk"], default=None, help="load generator (default: wrk when installed)"
    )
    args = p.parse_args(argv)
    args.tool = args.tool or ("wrk" if shutil.which("wrk") else "httpx")
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    levels = [1, 8] if quick else [1, 2, 4, 8, 16, 32, 64]
    seconds = args.seconds or (2.0 if quick else 10.0)
    bottleneck = args.bottleneck or (8 if quick else 64)
    registered = args.registered or (200 if quick else 1000)
    results: dict = {
        "command": " ".join(
            ["python -m benchmarks.server_load", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "note": args.note,
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.machine()}",
        "torch": torch.__version__,
        "backbone": args.backbone,
        "device": str(resolve_device(args.device)),
        "quick": quick,
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory(prefix="adaptformer-bench-") as tmp:
        work = Path(tmp)
        vit, _ = backbone_for(args, work)
        size = vit.patch_embed.img_size[0]
        print(f"building {TASKS} adapters (d^={bottleneck}) on {args.backbone}", flush=True)
        store = work / "store"
        tasks = task_store(store, vit, bottleneck)
        payloads = images(32, size)
        if args.saturation:
            args.seconds, args.bottleneck, args.reps = seconds, bottleneck, args.reps or (3 if quick else 7)
            results["saturation"] = saturation(args, vit, store, payloads, tasks)
            finish(args.out, results, render_saturation)
            return

        results["load"] = {}
        for mode, settings in (
            ("batching on", {"max_batch_size": 32, "max_wait_ms": 5}),
            ("batching off", {"max_batch_size": 1, "max_wait_ms": 0}),
        ):
            with Server(args, store, slots=args.slots, queue_size=4096, **settings) as server:
                rows = []
                for c in levels:
                    row = asyncio.run(load(server.url, c, seconds, payloads, tasks))
                    print(f"{mode}: concurrency {c}: {row['rps']:.1f} req/s, p50 {row['p50_ms']:.1f} ms, "
                          f"p99 {row['p99_ms']:.1f} ms", flush=True)  # fmt: skip
                    rows.append(row)
                results["load"][mode] = {"rows": rows, "mean_batch_size": batch_sizes(server.url)}
                if mode == "batching on":
                    fresh = [
                        adapter_file(vit, f"fresh{i}", bottleneck, seed=100 + i) for i in range(3 if quick else 10)
                    ]
                    results["upload"] = asyncio.run(upload_to_servable(server.url, fresh, payloads[0]))

        print("engine alone, interleaved with the plain backbone", flush=True)
        results["engine"] = engine_alone(vit, args.device, bottleneck, batch=32, reps=args.reps or (3 if quick else 7))

        print(f"page-in: {registered} registered adapters, {args.slots} slots", flush=True)
        big = work / "big"
        big.mkdir()
        variants = [adapter_file(vit, f"v{i}", bottleneck, seed=200 + i) for i in range(8)]
        for i in range(registered):
            (big / f"a{i:05d}.safetensors").write_bytes(variants[i % len(variants)])
        with Server(args, big, slots=args.slots) as server:
            first_start = server.ready_s
            sample = random.Random(0).sample(range(registered), 10 if quick else 50)
            results["page_in"] = asyncio.run(page_in(server.url, [f"a{i:05d}" for i in sample], payloads[1]))
        with Server(args, big, slots=args.slots) as server:
            restart = server.ready_s
        results["page_in"].update(registered=registered, slots=args.slots, start_s=first_start, restart_s=restart)

    write_report(args.out, render(results), results)


def saturation(
    args: argparse.Namespace, vit: torch.nn.Module, store: Path, payloads: list[bytes], tasks: list[str]
) -> dict:
    """Rounds of: the server with batching on, with batching off (both at ``--clients``), the engine alone;
    then the generator's ceiling against /healthz. Ratios per round, medians over rounds."""
    rounds = []
    on_settings = {"max_batch_size": 32, "max_wait_ms": 5}
    off_settings = {"max_batch_size": 1, "max_wait_ms": 0}
    common = {"slots": args.slots, "queue_size": 4096, **({"threads": args.threads} if args.threads else {})}
    with Server(args, store, **common, **on_settings) as on, Server(args, store, **common, **off_settings) as off:
        for r in range(args.rounds):
            row: dict = {"load_average": [round(v, 2) for v in os.getloadavg()]}
            row["on"] = measured(args.tool, on, args.clients, args.seconds, payloads, tasks)
            row["off"] = measured(args.tool, off, args.clients, args.seconds, payloads, tasks)
            row["engine"] = engine_alone(vit, args.device, args.bottleneck, batch=32, reps=args.reps)
            row["server_over_engine"] = round(row["on"]["rps"] / row["engine"]["engine_images_per_s"], 4)
            row["on_over_off"] = round(row["on"]["rps"] / row["off"]["rps"], 3)
            print(
                f"round {r + 1}: server {row['on']['rps']:.1f} img/s (mean batch {row['on']['mean_batch']}, server "
                f"CPU {row['on']['server_cpu']}, generator CPU {row['on']['generator_cpu']}), batching off "
                f"{row['off']['rps']:.1f}, engine {row['engine']['engine_images_per_s']:.1f}: "
                f"server/engine {row['server_over_engine']:.3f}, on/off {row['on_over_off']:.2f}",
                flush=True,
            )
            rounds.append(row)
        ceiling = measured(args.tool, on, args.clients, args.seconds, payloads, [])
    print(f"generator ceiling (GET /healthz): {ceiling['rps']:.1f} req/s", flush=True)
    return {
        "tool": args.tool,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": rounds,
        "ceiling": ceiling,
        "median_server_over_engine": round(statistics.median(r["server_over_engine"] for r in rounds), 4),
        "median_on_over_off": round(statistics.median(r["on_over_off"] for r in rounds), 3),
        "median_mean_batch": statistics.median(r["on"]["mean_batch"] for r in rounds),
    }


def _head(title: str, r: dict, setup: str) -> list[str]:
    """A report's title and first paragraph (the command, when, where, torch and backbone, then ``setup``), and the
    run's note."""
    where = (
        f"`{r['command']}`, {r['date']}, on {r['machine']} (load average at the start "
        f"{', '.join(str(v) for v in r['load_average_at_start'])}), torch {r['torch']}, backbone `{r['backbone']}` "
        f"on {r['device']}"
    )
    quick = " A `--quick` run: a smoke test, not a result." if r["quick"] else ""
    parts = [f"# {title}", "", where + setup + quick, ""]
    if r.get("note"):
        parts += [f"Note: {r['note']}", ""]
    return parts


def render_saturation(r: dict) -> str:
    s = r["saturation"]
    setup = (
        f", torch threads {r.get('threads') or 'default'}. {s['clients']} closed-loop clients ({s['tool']}, one "
        f"connection each, one PNG per request, tasks mixed over {TASKS} adapters) for {s['seconds']:g} s per "
        "measurement; client and server share the machine. Each round measures the server with batching on (max "
        "batch 32, max wait 5 ms), with batching off (max batch 1), then the engine alone on batches of 32 mixed tasks."
    )
    parts = _head("Server saturation", r, setup)
    parts += [
        "| round | load avg | server img/s | mean batch | p50 ms | p99 ms | server CPU | generator CPU | batching off "
        "img/s | engine img/s | server / engine | on / off |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(s["rounds"]):
        on, off = row["on"], row["off"]
        parts.append(
            f"| {i + 1} | {row['load_average'][0]} | {on['rps']:.1f} | {on['mean_batch']} | {on['p50_ms']:.1f} | "
            f"{on['p99_ms']:.1f} | {on['server_cpu']:.2f} | {on['generator_cpu']:.2f} | {off['rps']:.1f} | "
            f"{row['engine']['engine_images_per_s']:.1f} | {row['server_over_engine']:.3f} | {row['on_over_off']:.2f} |"
        )
    c = s["ceiling"]
    parts += [
        "",
        f"- median server / engine: **{s['median_server_over_engine']:.3f}**; median batching on / off: "
        f"**{s['median_on_over_off']:.2f}x**; median mean batch {s['median_mean_batch']}",
        f"- the generator's ceiling (same clients, GET /healthz on the batching-on server): {c['rps']:.0f} req/s, "
        f"generator CPU {c['generator_cpu']:.2f} cores, server CPU {c['server_cpu']:.2f} cores",
        "- CPU columns: cores used on average over the measurement (2.0 = both cores of this machine)",
    ]
    return "\n".join(parts)


def render(r: dict) -> str:
    setup = f". One image per request, tasks mixed over {TASKS} adapters; client and server share the machine."
    parts = _head("Server load benchmark", r, setup)
    for mode, data in r["load"].items():
        parts += [f"## Throughput and latency, {mode} (mean batch {data['mean_batch_size']:.1f})", ""]
        parts += [records(data["rows"], ["concurrency", "rps", "p50_ms", "p99_ms", "requests", "errors"]), ""]
    best = max(row["rps"] for row in r["load"]["batching on"]["rows"])
    e = r["engine"]
    parts += [
        "## Saturation",
        "",
        f"- server, batching on, best: {best:.1f} images/s",
        f"- engine alone, batches of {e['batch']} mixing {TASKS} tasks (d^={e['bottleneck']}, {e['dtype']}): "
        f"{e['engine_images_per_s']:.1f} images/s",
        f"- plain backbone `forward_features`, same batches, interleaved with the engine ({e['reps']} repetitions of "
        f"{e['iters']} batch(es)): {e['baseline_images_per_s']:.1f} images/s",
        f"- server / engine: {best / e['engine_images_per_s']:.0%}; engine / plain backbone: {e['ratio']:.3f} "
        "(median of the paired ratios, as in docs/benchmarks/engine_throughput.md)",
        "",
        "## Upload to servable",
        "",
        records(r["upload"], ["upload_ms", "servable_ms"]),
        "",
        f"## Page-in ({r['page_in']['registered']} registered adapters, {r['page_in']['slots']} slots)",
        "",
        f"- time to ready: {r['page_in']['start_s']:.1f} s at first start (hashes every file), "
        f"{r['page_in']['restart_s']:.1f} s on restart (version cache)",
        f"- first request (paged in): p50 {r['page_in']['cold_p50_ms']:.1f} ms, p99 {r['page_in']['cold_p99_ms']:.1f} ms",
        f"- repeated request (resident): p50 {r['page_in']['warm_p50_ms']:.1f} ms",
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
