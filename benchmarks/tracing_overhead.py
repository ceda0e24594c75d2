"""What traces cost: server images/s with ``--tracing`` on and off, the same run, rounds interleaved.

    python -m benchmarks.tracing_overhead --out docs/benchmarks/tracing_overhead.md
    python -m benchmarks.tracing_overhead --seconds 5 --rounds 1          # a smoke run
    python -m benchmarks.tracing_overhead --backbone vit_small_patch16_224 --out docs/benchmarks/tracing_overhead_vit_small.md

For each server shape (one process; ``--workers 2``: two fronts and an engine process) two real servers run side by
side, one with tracing off and one with it on, on the embedded backbone or ``--backbone`` (random weights) with 16
adapters; the load generator (``benchmarks.server_load.load``: closed loop, one PNG per request, the tasks mixed)
loads one server at a time for ``--seconds``, in the order off, on, on, off, ... so that a drift of the machine's load falls on both
alike. The traced servers export every span over OTLP/HTTP (their BatchSpanProcessor, the default exporter) to a
sink in this process that answers 200 and counts what it got: the cost measured includes making, batching,
encoding and sending the spans. The ratio is the median over the rounds of on/off images/s.

It also times the off path itself: :func:`adaptformer_server.tracing.span` without a tracer (what each of a
request's four stage spans costs when tracing is off) and the tracer check the batcher makes per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import statistics
import tempfile
import threading
import timeit
from pathlib import Path

from adaptformer_server import tracing
from benchmarks.machine import finish, header, report_head
from benchmarks.server_load import images, load, random_backbone, task_store
from tests.support import ServerProcess

SHAPES = {"one process": [], "2 fronts + engine": ["--workers", "2", "--engine-process", "on"]}
# tracing off; on with every request sampled (the SDK's default); on with 1 request in 10 sampled (the standard
# OTEL_TRACES_SAMPLER variables): what a busy server would run
MODES: dict[str, dict[str, str] | None] = {
    "off": None,
    "on": {},
    "on, 10% sampled": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
}


class Sink(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver that keeps nothing: 200 to every POST, counting the requests and bytes."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                with sink.lock:
                    sink.requests += 1
                    sink.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def server(
    args: argparse.Namespace,
    store: Path,
    backbone: list[object],
    shape: list[str],
    mode: dict[str, str] | None,
    sink: Sink,
) -> ServerProcess:
    flags: list[object] = [*backbone, "--store", store, "--no-seed-demo", "--log-level", "warning"]
    flags += ["--threads", args.threads, "--max-batch-size", 32, "--max-wait-ms", 5, "--queue-size", 4096, *shape]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_SERVICE_NAME": "tracing-overhead", **(mode or {})}
    return ServerProcess([*flags, "--no-tracing" if mode is None else "--tracing"], env=env, ready_timeout=600)


def off_path(number: int = 200_000) -> dict:
    """Nanoseconds per call of what tracing off leaves on the hot path."""

    def stage() -> None:
        with tracing.span(None, "decode"):
            pass

    def bare() -> None:  # the same function without the span: what a stage costs anyway
        pass

    tracer = None

    def check() -> None:
        if tracer is not None:
            pass

    runs = {name: min(timeit.repeat(f, number=number, repeat=5)) / number * 1e9 for name, f in
            (("span", stage), ("bare", bare), ("check", check))}  # fmt: skip
    return {
        "span_ns": round(runs["span"] - runs["bare"], 1),
        "check_ns": round(runs["check"] - runs["bare"], 1),
        "per_request_ns": round(3 * (runs["span"] - runs["bare"]) + 4 * (runs["check"] - runs["bare"]), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per server per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server")
    p.add_argument("--backbone", default="embedded", help="embedded, or a timm ViT name (random weights)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    results = header("benchmarks.tracing_overhead", argv, args.note)
    results.update(seconds=args.seconds, rounds=args.rounds, concurrency=args.concurrency, threads=args.threads)
    results["backbone"] = args.backbone
    results["off_path"] = off_path()
    results["shapes"] = {}
    sink = Sink()
    with tempfile.TemporaryDirectory(prefix="adaptformer-tracing-") as tmp:
        work = Path(tmp)
        vit, _, backbone = random_backbone(args.backbone, work)
        size = vit.patch_embed.img_size[0]
        store = work / "store"
        tasks = task_store(store, vit, 64)
        payloads = images(32, size)
        for shape in args.shapes.split(","):
            with contextlib.ExitStack() as stack:
                servers = {m: stack.enter_context(server(args, store, backbone, SHAPES[shape], env, sink))
                           for m, env in MODES.items()}  # fmt: skip
                rows: dict[str, list[dict]] = {m: [] for m in MODES}
                before = sink.requests, sink.bytes
                for r in range(args.rounds):
                    order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                    for mode in order:
                        row = asyncio.run(load(servers[mode].url, args.concurrency, args.seconds, payloads, tasks))
                        rows[mode].append(row)
                        print(f"{shape}, round {r + 1}, tracing {mode}: {row['rps']:.1f} images/s, "
                              f"p50 {row['p50_ms']:.1f} ms, errors {row['errors']}", flush=True)  # fmt: skip
            out: dict = {"rows": rows, "exports": sink.requests - before[0], "export_bytes": sink.bytes - before[1]}
            for mode in MODES:
                out[mode] = {"images_s": round(statistics.median(x["rps"] for x in rows[mode]), 2)}
                if mode != "off":
                    ratios = [a["rps"] / b["rps"] for a, b in zip(rows[mode], rows["off"], strict=True)]
                    out[mode].update(ratios=[round(x, 4) for x in ratios], ratio=round(statistics.median(ratios), 4))
            results["shapes"][shape] = out
    sink.shutdown()
    finish(args.out, results, render)


def render(r: dict) -> str:
    off = r["off_path"]
    lines = [
        *report_head(
            "Tracing overhead",
            r,
            f" Each round: {r['seconds']:g} s of closed-loop load at concurrency {r['concurrency']} (one PNG per "
            f"request, 16 tasks mixed; backbone `{r.get('backbone', 'embedded')}` (random weights), {r['threads']} torch thread per server, max batch 32, "
            f"max wait 5 ms) on each of three servers side by side: tracing off, on (every request sampled), on with "
            f"1 request in 10 sampled (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.1`); "
            f"{r['rounds']} rounds, the order reversed every other round; the traced servers export every sampled span "
            "over OTLP/HTTP to a local sink. Ratios: the median of the per-round ratios to tracing off (target: at "
            "least 0.97).",
        ),
        "| shape | off, images/s | on, images/s | on/off per round | on/off | 10% sampled, images/s | "
        "10% sampled/off per round | 10% sampled/off | OTLP exports (bytes) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, s in r["shapes"].items():
        on, sampled = s["on"], s["on, 10% sampled"]
        lines.append(
            f"| {shape} | {s['off']['images_s']:.1f} | {on['images_s']:.1f} | "
            f"{', '.join(f'{x:.3f}' for x in on['ratios'])} | **{on['ratio']:.3f}** | {sampled['images_s']:.1f} | "
            f"{', '.join(f'{x:.3f}' for x in sampled['ratios'])} | **{sampled['ratio']:.3f}** | "
            f"{s['exports']} ({s['export_bytes']:,}) |"
        )
    lines += [
        "",
        f"Tracing off, the hot path keeps a `tracing.span(None, ...)` per stage ({off['span_ns']} ns each over an "
        f"empty function) and a tracer check ({off['check_ns']} ns): {off['per_request_ns']} ns a request for its "
        "three stage spans and four checks, against milliseconds a request above. Off, no module of the SDK, the "
        "instrumentation or the exporter is imported, and no more of the API than FastAPI imports itself "
        "(tests/server/test_tracing.py).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
