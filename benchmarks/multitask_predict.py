"""One image, many tasks: ``POST /predict?task=t1&...&task=tN`` against N single-task requests.

    python -m benchmarks.multitask_predict [--quick] [--tasks 1,2,4,8] [--reps 30] [--out docs/benchmarks]

The server is the real app (``create_app``) with the embedded backbone (its shipped weights), driven in-process
over ASGI with httpx, so the times include HTTP parsing, multipart decoding, preprocessing, batching, the forward
pass and the JSON answer, but no network. Each task is an AdaptFormer adapter (bottleneck 16, all blocks, 10
classes, random weights: speed does not depend on their values). For each N, three ways to get the same N answers
for one 28x28 PNG are measured interleaved (multi, sequential, concurrent, multi, ...), medians over ``--reps``:

- ``multi``: one request naming the N tasks (one decode, one forward pass of N rows);
- ``sequential``: N single-task requests one after the other (N decodes, N forward passes);
- ``concurrent``: N single-task requests sent at once (N decodes; the batcher merges them into one forward pass
  when they arrive within ``max_wait_ms``).

Writes ``multitask_predict.json`` and ``multitask_predict.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch

from adaptformer.embedded import load_embedded
from adaptformer_server import create_app
from adaptformer_server.settings import Settings
from benchmarks.machine import finish, header, report_head, table
from tests.support import adapter_bytes, png


def make_adapters(store: Path, n: int) -> list[str]:
    vit = load_embedded()
    vit.reset_classifier(0)
    names = [f"task{i:02d}" for i in range(n)]
    labels = [str(c) for c in range(10)]
    for i, name in enumerate(names):
        data = adapter_bytes(vit, name, num_classes=10, bottleneck=16, seed=i, scale=0.05, labels=labels)
        (store / f"{name}.safetensors").write_bytes(data)
    return names


def forward_passes(runtime) -> int:
    """Forward passes run so far (the count of the batch-size histogram)."""
    samples = runtime.metrics.batch_size.collect()[0].samples
    return int(next(s.value for s in samples if s.name.endswith("_count")))


async def measure(counts: list[int], reps: int, max_wait_ms: float, threads: int) -> dict:
    image = png(0, 28)
    files = [("image", ("x.png", image, "image/png"))]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        names = make_adapters(store, max(counts))
        settings = Settings(store=store, seed_demo=False, max_wait_ms=max_wait_ms, threads=threads, log_level="warning")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await runtime.wait_ready(300)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client:

                async def post(tasks: list[str]) -> None:
                    r = await client.post("/predict", params={"task": tasks}, files=files)
                    r.raise_for_status()

                async def multi(tasks: list[str]) -> None:
                    await post(tasks)

                async def sequential(tasks: list[str]) -> None:
                    for t in tasks:
                        await post([t])

                async def concurrent(tasks: list[str]) -> None:
                    await asyncio.gather(*(post([t]) for t in tasks))

                ways = {"multi": multi, "sequential": sequential, "concurrent": concurrent}
                rows = []
                for n in counts:
                    tasks = names[:n]
                    for fn in ways.values():  # warm-up: page every adapter in
                        await fn(tasks)
                    times: dict[str, list[float]] = {k: [] for k in ways}
                    forwards: dict[str, list[int]] = {k: [] for k in ways}
                    for _ in range(reps):
                        for key, fn in ways.items():
                            before = forward_passes(runtime)
                            start = time.perf_counter()
                            await fn(tasks)
                            times[key].append((time.perf_counter() - start) * 1000)
                            forwards[key].append(forward_passes(runtime) - before)
                    med = {k: statistics.median(v) for k, v in times.items()}
                    row = {
                        "tasks": n,
                        "multi_ms": round(med["multi"], 2),
                        "sequential_ms": round(med["sequential"], 2),
                        "concurrent_ms": round(med["concurrent"], 2),
                        "speedup_vs_sequential": round(med["sequential"] / med["multi"], 2),
                        "speedup_vs_concurrent": round(med["concurrent"] / med["multi"], 2),
                        "forward_passes": {k: statistics.median(v) for k, v in forwards.items()},
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return {"rows": rows}


def markdown(result: dict) -> str:
    setup = (
        f" torch {result['torch']}, {result['threads']} inference thread(s), max_wait_ms {result['max_wait_ms']}; medians over "
        f"{result['reps']} interleaved repetitions. Embedded backbone (28x28, 6 blocks, width 128), AdaptFormer "
        "adapters with bottleneck 16, one 28x28 PNG, in-process over ASGI (no network)."
    )
    lines = report_head("Multi-task predict: one request for N tasks vs N single-task requests", result, setup)
    lines += table(
        [
            "tasks",
            "one multi-task request",
            "N sequential requests",
            "N concurrent requests",
            "speed-up vs sequential",
            "vs concurrent",
            "forward passes (multi / seq / conc)",
        ],
        (
            [
                r["tasks"],
                *(f"{r[k]:.1f} ms" for k in ("multi_ms", "sequential_ms", "concurrent_ms")),
                f"{r['speedup_vs_sequential']:.2f}x",
                f"{r['speedup_vs_concurrent']:.2f}x",
                " / ".join(f"{r['forward_passes'][k]:g}" for k in ("multi", "sequential", "concurrent")),
            ]
            for r in result["rows"]
        ),
        left=0,
    )
    lines += [
        "",
        "A multi-task request decodes and preprocesses the image once and runs the N rows in one forward pass "
        "(rows of one task share the task's branches; the frozen layers run once for all rows). N sequential "
        "requests pay the HTTP, decoding and forward-pass overhead N times; N concurrent requests share one "
        "forward pass through the batcher but still pay N request overheads and wait up to max_wait_ms for "
        "the batch to fill.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="1,2,4,8", help="comma-separated task counts")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tasks 1,4 and 5 repetitions")
    parser.add_argument("--out", type=Path, default=None, help="write multitask_predict.{json,md} here")
    args = parser.parse_args(argv)
    counts = [1, 4] if args.quick else [int(c) for c in args.tasks.split(",")]
    reps = 5 if args.quick else args.reps
    torch.manual_seed(0)
    result = header("benchmarks.multitask_predict", argv)
    result.update(asyncio.run(measure(counts, reps, args.max_wait_ms, args.threads)))
    result.update(reps=reps, max_wait_ms=args.max_wait_ms, threads=args.threads, torch=torch.__version__)
    finish(None if args.out is None else args.out / "multitask_predict.md", result, markdown)


if __name__ == "__main__":
    main()
