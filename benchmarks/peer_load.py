"""The server against the engine alone and against LitServe serving the same engine and adapters.

    pip install '.[peer]'                                     # LitServe, for the peer (benchmarks/litserve_peer.py)
    python -m benchmarks.peer_load --quick
    python -m benchmarks.peer_load --out docs/benchmarks/peer_load.md
    python -m benchmarks.peer_load --backbone vit_small_patch16_224 --out docs/benchmarks/peer_load_vit_small.md

The real engine (no stand-in), 16 tasks mixed, one image per request as a multipart form (the same PNG bytes for
every server), wrk with ``--clients`` connections, torch 1 thread everywhere, interleaved rounds (medians):

- ``server``: ``adaptformer serve`` as a CPU host runs it by default (one process);
- ``server, 2 fronts``: ``--workers 2`` (two front processes and an engine process);
- ``LitServe``: one API process, one inference worker, max batch 32, batch timeout 5 ms, the same
  ``MultiTaskViT``, adapter files and preprocessing;
- ``engine alone``: ``MultiTaskViT`` on batches of 32 mixing the 16 tasks, no HTTP (benchmarks.server_load's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.machine import finish, header, report_head, table
from benchmarks.server_load import TASKS, engine_alone, random_backbone, task_store, wrk_load
from tests.support import ServerProcess, png, wait_ready

BOUNDARY = "adaptformerbenchboundary"
PEER = Path(__file__).with_name("litserve_peer.py")


def form(image: bytes, task: str | None) -> bytes:
    """A multipart form with the ``image`` file (and a ``task`` field for the peer)."""
    parts = []
    if task is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="task"\r\n\r\n{task}\r\n'.encode())
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Peer:
    """benchmarks/litserve_peer.py as a process on a free port, until closed."""

    def __init__(self, weights: Path, backbone: str, store: Path, log: Path) -> None:
        import subprocess

        from tests.support import clean_env, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = clean_env(
            {"PEER_WEIGHTS": str(weights), "PEER_BACKBONE": backbone, "PEER_STORE": str(store), "PEER_THREADS": "1"}
        )
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), "--port", str(self.port)], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(self.url, self.proc, path="/health", output=lambda: log.read_text()[-2000:])
        except AssertionError:
            self.close()
            raise

    def close(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
        self._log.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backbone", default="embedded", help="embedded, or a timm ViT name (random weights)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 quick)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 15; 3 quick)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--bottleneck", type=int, default=16)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 15.0)
    torch.set_num_threads(1)
    results: dict = {
        **header("benchmarks.peer_load", argv, args.note),
        "backbone": args.backbone,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "bottleneck": args.bottleneck,
    }
    with tempfile.TemporaryDirectory(prefix="adaptformer-peer-") as tmp:
        work = Path(tmp)
        vit, weights, backbone = random_backbone(args.backbone, work)
        size = vit.patch_embed.img_size[0]
        store = work / "store"
        task_store(store, vit, args.bottleneck)
        images = [png(i, size) for i in range(8)]
        ours = [form(images[k % len(images)], None) for k in range(8)]
        theirs = [form(images[k % len(images)], f"task{k % TASKS}") for k in range(2 * TASKS)]
        ctype = f"multipart/form-data; boundary={BOUNDARY}"
        flags: list[object] = [*backbone, "--store", store, "--no-seed-demo", "--log-level", "warning"]
        flags += ["--threads", "1", "--device", "cpu", "--max-batch-size", "32", "--max-wait-ms", "5"]
        servers: dict[str, object] = {
            "server": ServerProcess([*flags, "--workers", "1"], log=work / "one.log", ready_timeout=600),
            "server, 2 fronts": ServerProcess([*flags, "--workers", "2"], log=work / "two.log", ready_timeout=600),
        }
        servers["LitServe"] = Peer(weights, args.backbone, store, work / "peer.log")
        rows: dict[str, list[dict]] = {name: [] for name in [*servers, "engine alone"]}
        try:
            tasks = [f"task{i}" for i in range(TASKS)]
            for name, server in servers.items():  # one short warm-up each (first batches, page-ins)
                wrk_load(server.url, 4, 2, theirs if name == "LitServe" else ours, tasks, ctype)  # type: ignore[attr-defined]
            order = list(servers)
            for r in range(args.rounds):
                for name in order[r % len(order) :] + order[: r % len(order)]:
                    server = servers[name]
                    payloads = theirs if name == "LitServe" else ours
                    row = wrk_load(server.url, args.clients, args.seconds, payloads, tasks, ctype)  # type: ignore[attr-defined]
                    rows[name].append(row)
                    print(f"round {r + 1} {name}: {row['rps']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, "
                          f"p99 {row['p99_ms']:.0f} ms, errors {row['errors']}", flush=True)  # fmt: skip
                engine = engine_alone(vit, "cpu", args.bottleneck, batch=32, reps=3 if args.quick else 5)
                rows["engine alone"].append({"rps": engine["engine_images_per_s"], "raw": engine})
                print(f"round {r + 1} engine alone: {rows['engine alone'][-1]['rps']:.1f} img/s", flush=True)
        finally:
            for server in servers.values():
                server.close()  # type: ignore[attr-defined]
    med = {name: {k: statistics.median(row[k] for row in rs) for k in ("rps", "p50_ms", "p99_ms") if k in rs[0]}
           for name, rs in rows.items()}  # fmt: skip
    results["rows"] = rows
    results["median"] = med
    engine_rps = med["engine alone"]["rps"]
    results["ratios"] = {
        "server / engine alone": round(med["server"]["rps"] / engine_rps, 3),
        "server, 2 fronts / engine alone": round(med["server, 2 fronts"]["rps"] / engine_rps, 3),
        "server / LitServe": round(med["server"]["rps"] / med["LitServe"]["rps"], 3),
        "server, 2 fronts / LitServe": round(med["server, 2 fronts"]["rps"] / med["LitServe"]["rps"], 3),
    }
    finish(args.out, results, render)


def render(r: dict) -> str:
    setup = (
        f" Backbone `{r['backbone']}` on the CPU, torch 1 thread, {TASKS} tasks (d^={r['bottleneck']}) mixed, one PNG "
        f"per request as a multipart form, {r['clients']} wrk connections, {r['seconds']:.0f} s per measurement, "
        f"{r['rounds']} interleaved rounds (medians); client and servers share the machine."
    )
    lines = [
        *report_head("The server, the engine alone and LitServe", r, setup),
    ]
    lines += table(
        ["setup", "img/s", "p50 ms", "p99 ms", "per round (img/s)"],
        (
            [
                name,
                m["rps"],
                *(f"{m[k]:.0f}" if k in m else "-" for k in ("p50_ms", "p99_ms")),
                ", ".join(f"{row['rps']:.1f}" for row in r["rows"][name]),
            ]
            for name, m in r["median"].items()
        ),
    )
    lines.append("")
    lines += table(["ratio (medians)", "value"], ([k, f"{v:.3f}"] for k, v in r["ratios"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
