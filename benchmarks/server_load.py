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
import io
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

import adaptformer as af
from adaptformer.adapter_file import task_to_bytes
from adaptformer.embedded import build_embedded
from adaptformer.engine import MultiTaskViT
from adaptformer.preprocess import spec_from_model
from adaptformer_server.backbone import load_backbone, resolve_device
from adaptformer_server.settings import Settings

if __package__ in (None, ""):  # run as a script: `benchmarks` is a top-level package of the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import engine_throughput as bench
from benchmarks.machine import cpu_model

TASKS = 16


# -- set-up ----------------------------------------------------------------------------------------------------
def backbone_for(args: argparse.Namespace, workdir: Path) -> tuple[torch.nn.Module, Path | None]:
    """The backbone (to build adapters on) and the weights file the server gets."""
    if args.weights is None and args.backbone == "embedded":
        torch.manual_seed(0)
        model = build_embedded(num_classes=10).eval()
        weights = workdir / "backbone.safetensors"
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        args.weights = weights
    vit, _ = load_backbone(Settings(backbone=args.backbone, weights=args.weights))
    return vit, args.weights


def adapter_file(vit: torch.nn.Module, name: str, bottleneck: int, seed: int) -> bytes:
    model = copy.deepcopy(vit)
    af.add_adapters(model, af.AdapterConfig(bottleneck=bottleneck), num_classes=10)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    if not getattr(model, "pretrained_cfg", None):
        model.pretrained_cfg = {"architecture": "benchmark-vit"}
    return task_to_bytes(af.extract_task(model, name, input_spec=spec_from_model(vit)))


def images(n: int, size: int) -> list[bytes]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m adaptformer_server`` process; ``ready_s`` is the time from spawn to /readyz 200."""

    def __init__(self, args: argparse.Namespace, store: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "adaptformer_server", "--backbone", args.backbone, "--store", str(store)]
        cmd += ["--port", str(self.port), "--no-seed-demo", "--log-level", "warning", "--device", args.device]
        if args.weights is not None:
            cmd += ["--weights", str(args.weights)]
        for key, value in settings.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTFORMER_")}
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = start + 600
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server not ready after 600 s")
        self.ready_s = time.perf_counter() - start

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


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
    args = p.parse_args(argv)
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
    }
    with tempfile.TemporaryDirectory(prefix="adaptformer-bench-") as tmp:
        work = Path(tmp)
        vit, _ = backbone_for(args, work)
        size = vit.patch_embed.img_size[0]
        print(f"building {TASKS} adapters (d^={bottleneck}) on {args.backbone}", flush=True)
        files = [adapter_file(vit, f"task{i}", bottleneck, seed=i) for i in range(TASKS)]
        payloads = images(32, size)
        store = work / "store"
        store.mkdir()
        for i, data in enumerate(files):
            (store / f"task{i}.safetensors").write_bytes(data)
        tasks = [f"task{i}" for i in range(TASKS)]

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

    report = render(results)
    print("\n" + report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


def render(r: dict) -> str:
    header = (
        f"`{r['command']}`, {r['date']}, on {r['machine']} (load average at the start "
        f"{', '.join(str(v) for v in r['load_average_at_start'])}), torch {r['torch']}, backbone `{r['backbone']}` "
        f"on {r['device']}. One image per request, tasks mixed over {TASKS} adapters; client and server share the "
        "machine."
    )
    if r["quick"]:
        header += " A `--quick` run: a smoke test, not a result."
    parts = ["# Server load benchmark", "", header, ""]
    if r.get("note"):
        parts += [f"Note: {r['note']}", ""]
    for mode, data in r["load"].items():
        parts += [f"## Throughput and latency, {mode} (mean batch {data['mean_batch_size']:.1f})", ""]
        parts += [table(data["rows"], ["concurrency", "rps", "p50_ms", "p99_ms", "requests", "errors"]), ""]
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
        table(r["upload"], ["upload_ms", "servable_ms"]),
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
