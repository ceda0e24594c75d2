"""Front-tier benchmark: what the server's processes cost per image when the device costs the host nothing.

    python -m benchmarks.front_tier --quick                       # a smoke run (a few minutes)
    python -m benchmarks.front_tier --out docs/benchmarks/front_tier.md

The engine's forward pass is replaced by a sleep of ``--stand-in-ms`` per batch (benchmarks/stand_in_server.py:
no CPU, as a GPU's forward costs the host none), so the server's CPU goes to HTTP, auth, limits, decoding,
preprocessing, batching and answers alone. Three shapes of the same server, interleaved in rounds (medians):

- ``one process``: ``--workers 1``, everything in one process (the CPU-only default);
- ``1 front + engine``: ``--workers 1 --engine-process on``;
- ``2 fronts + engine``: ``--workers 2``.

Three payloads: 28x28 PNG (embedded backbone, 16 tasks), 224x224 JPEG and 1024x768 JPEG resized to 224 (ViT-S/16
with random weights, 16 tasks). Load: wrk, ``--clients`` connections, tasks mixed, one image per request, on the
same machine as the server (it competes for the same cores: a lower bound). CPU-ms per image: CPU seconds of the
fronts (and of the whole server: fronts, engine, supervisor) over the images answered.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from benchmarks.machine import finish, header, report_head, table
from benchmarks.server_load import TASKS, task_store, wrk_load
from tests.support import ServerProcess, children, cpu_seconds, embedded_backbone, png

STAND_IN = Path(__file__).with_name("stand_in_server.py")
SHAPES = {
    "one process": ["--workers", "1"],
    "1 front + engine": ["--workers", "1", "--engine-process", "on"],
    "2 fronts + engine": ["--workers", "2"],
}
# ViT-B/16 images/s on one A100, as published: PyTorch eager at batch 64-256, and AITemplate's compiled fp16 engine.
VIT_B16_A100 = {"eager": (2000, 2200), "compiled fp16": 5000}


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (smooth shapes, gradients, fine noise; quality 90): decodes like a camera picture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 255, width).repeat(height, 1)
    rgb = torch.stack([base, base.flip(1) * 0.7, torch.full_like(base, 90.0)], dim=-1)
    img = Image.fromarray(rgb.to(torch.uint8).numpy(), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = (int(v) for v in torch.randint(0, min(width, height), (2,), generator=g))
        r = int(torch.randint(width // 20, width // 4, (1,), generator=g))
        color = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(2))
    noise = (torch.randn(height, width, 3, generator=g) * 6).clamp(-20, 20)
    arr = (torch.from_numpy(np.array(img)).float() + noise).clamp(0, 255).to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.numpy(), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Tree:
    """The CPU seconds of a server's processes by role (the process itself, its engine and front children)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def cpu(self) -> dict[str, float]:
        out = {"fronts": 0.0, "engine": 0.0, "supervisor": 0.0}
        kids = children(self.server.pid)
        if not kids:  # one process: it is the front and the engine
            out["fronts"] = cpu_seconds(self.server.pid)
            return out
        out["supervisor"] = cpu_seconds(self.server.pid)
        for pid, title in kids.items():
            role = "engine" if title.startswith("adaptformer engine") else "fronts"
            if role == "fronts" and not title.startswith("adaptformer front"):
                role = "supervisor"  # multiprocessing's resource tracker
            with contextlib.suppress(OSError):  # it just exited
                out[role] += cpu_seconds(pid)
        return out


def build_store(work: Path, kind: str, vit: torch.nn.Module) -> Path:
    store = work / f"store-{kind}"
    task_store(store, vit, 8)
    return store


def start(shape: str, backbone: list[object], store: Path, args: argparse.Namespace, log: Path) -> ServerProcess:
    flags: list[object] = [*backbone, "--store", store, "--no-seed-demo", "--log-level", "warning", "--threads", "1"]
    flags += ["--max-batch-size", "32", "--max-wait-ms", "5", "--queue-size", "4096", *SHAPES[shape]]
    env = {"STAND_IN_MS": str(args.stand_in_ms)}
    return ServerProcess(flags, command=(sys.executable, STAND_IN), env=env, log=log, ready_timeout=600, interval=0.1)


def measure(server: ServerProcess, args: argparse.Namespace, payloads: list[bytes], ctype: str) -> dict:
    tree = Tree(server)
    tasks = [f"task{i}" for i in range(TASKS)]
    before, t0 = tree.cpu(), time.perf_counter()
    row = wrk_load(server.url, args.clients, args.seconds, payloads, tasks, content_type=ctype)
    wall = time.perf_counter() - t0
    after = tree.cpu()
    # wrk's warm-up run (a third of the time) is inside the CPU window: count its images too
    images = row["rps"] * (args.seconds + max(1, int(args.seconds // 3)))
    spent = {k: after[k] - before[k] for k in after}
    row["cpu_ms_per_image_fronts"] = round(1000 * spent["fronts"] / images, 3) if images else float("nan")
    row["cpu_ms_per_image_server"] = round(1000 * sum(spent.values()) / images, 3) if images else float("nan")
    row["server_cores"] = round(sum(spent.values()) / wall, 2)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round of 3 s per measurement")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="measured seconds per run (default 10; 3 quick)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--stand-in-ms", type=float, default=2.0, help="the device stand-in's sleep per batch")
    p.add_argument("--kinds", default="png28,jpeg224,jpeg1024", help="payloads, comma-separated")
    p.add_argument("--out", type=Path, default=None, help="also write the report (markdown) and its JSON here")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    results: dict = {
        **header("benchmarks.front_tier", argv, args.note),
        "stand_in_ms": args.stand_in_ms,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "kinds": {},
    }
    with tempfile.TemporaryDirectory(prefix="adaptformer-front-") as tmp:
        work = Path(tmp)
        embedded = work / "embedded.safetensors"
        small = work / "vit_small.safetensors"
        vit_small = None
        for kind in args.kinds.split(","):
            if kind == "png28":
                vit = embedded_backbone(embedded, seed=0)
                backbone: list[object] = ["--weights", embedded]
                payloads, ctype = [png(i, 28) for i in range(32)], "image/png"
            else:
                import timm
                from safetensors.torch import save_file

                if vit_small is None:  # one set of weights for both JPEG kinds (the adapters record its fingerprint)
                    vit_small = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
                    save_file({k: v.contiguous() for k, v in vit_small.state_dict().items()}, small)
                vit = vit_small
                backbone = ["--backbone", "vit_small_patch16_224", "--weights", small]
                w, h = (224, 224) if kind == "jpeg224" else (1024, 768)
                payloads, ctype = [photo(w, h, i) for i in range(16)], "image/jpeg"
            store = build_store(work, kind, vit)
            servers = {s: start(s, backbone, store, args, work / f"{kind}-{i}.log") for i, s in enumerate(SHAPES)}
            rows: dict[str, list[dict]] = {s: [] for s in SHAPES}
            try:
                order = list(SHAPES)
                for r in range(args.rounds):
                    for shape in order[r % len(order) :] + order[: r % len(order)]:
                        row = measure(servers[shape], args, payloads, ctype)
                        rows[shape].append(row)
                        if row["errors"]:
                            print(servers[shape].output(1500), flush=True)
                        print(
                            f"{kind} round {r + 1} {shape}: {row['rps']:.0f} img/s, p99 {row['p99_ms']:.0f} ms, "
                            f"fronts {row['cpu_ms_per_image_fronts']} CPU-ms/img, "
                            f"server {row['cpu_ms_per_image_server']} CPU-ms/img, errors {row['errors']}",
                            flush=True,
                        )
            finally:
                for server in servers.values():
                    server.close()
            summary = {}
            for shape, shape_rows in rows.items():
                summary[shape] = {
                    key: statistics.median(row[key] for row in shape_rows)
                    for key in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_image_fronts", "cpu_ms_per_image_server")
                }
                summary[shape]["errors"] = sum(row["errors"] for row in shape_rows)
            one, two = summary["1 front + engine"]["rps"], summary["2 fronts + engine"]["rps"]
            results["kinds"][kind] = {
                "payload_bytes": round(statistics.mean(len(x) for x in payloads)),
                "rows": rows,
                "median": summary,
                "two_over_one_front": round(two / one, 3) if one else float("nan"),
                "fed_by_16_cores": round(14 * 1000 / summary["2 fronts + engine"]["cpu_ms_per_image_fronts"]),
            }
    finish(args.out, results, render)


NAMES = {"png28": "28x28 PNG", "jpeg224": "224x224 JPEG", "jpeg1024": "1024x768 JPEG, resized to 224"}


def render(r: dict) -> str:
    setup = (
        f" The forward pass of each batch is a sleep of {r['stand_in_ms']} ms (no CPU); {r['clients']} wrk "
        f"connections, tasks mixed over {TASKS} adapters, one image per request, {r['seconds']:.0f} s per run, "
        f"{r['rounds']} interleaved rounds (medians). Client and server share the machine's cores."
    )
    lines = [
        *report_head("Front tier (device stand-in)", r, setup),
    ]
    lines += table(
        ["payload", "shape", "img/s", "p50 ms", "p99 ms", "fronts CPU-ms/img", "server CPU-ms/img", "errors"],
        (
            [
                f"{NAMES.get(kind, kind)} ({k['payload_bytes']} B)",
                shape,
                f"{m['rps']:.0f}",
                m["p50_ms"],
                m["p99_ms"],
                f"{m['cpu_ms_per_image_fronts']:.3f}",
                f"{m['cpu_ms_per_image_server']:.3f}",
                m["errors"],
            ]
            for kind, k in r["kinds"].items()
            for shape, m in k["median"].items()
        ),
        left=2,
    )
    lines.append("")
    lines += table(
        ["payload", "2 fronts / 1 front (img/s)", "images/s 14 fronts would feed (16 cores)"],
        (
            [NAMES.get(kind, kind), f"{k['two_over_one_front']:.2f}x", f"{k['fed_by_16_cores']:,}"]
            for kind, k in r["kinds"].items()
        ),
    )
    eager, compiled = VIT_B16_A100["eager"], VIT_B16_A100["compiled fp16"]
    lines += [
        "",
        f"For scale: a ViT-B/16 runs about {eager[0]:,}-{eager[1]:,} images/s on one A100 under PyTorch eager "
        f"(batch 64-256) and about {compiled:,} as a compiled fp16 engine (AITemplate's published table); an H100 "
        "more. 'Images/s 14 fronts would feed' is 14 x 1000 / (fronts CPU-ms per image): 16 cores, one for the "
        "engine process and one for the rest, if the fronts scale as they do here (not measured on 16 cores).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
