"""Training jobs against inference: /predict latency while the server trains a task, and the job's wall time.

    python -m benchmarks.training_load --out docs/benchmarks/training_load.md
    python -m benchmarks.training_load --quick          # a smoke run (a few minutes on a small CPU)

Against a real ``python -m adaptformer_server`` process on loopback (embedded backbone with its shipped weights,
the demo adapters, ``--threads 1`` for inference, the training worker at its defaults: 1 thread on up to 4 cores,
nice 10):

1. /predict p50/p99 at 8 concurrent closed-loop clients (wrk, one Fashion-MNIST image each, the demo ``fashion``
   adapter), in windows that alternate: idle, then while a job trains (the window starts once the worker runs and
   the job must still be running when it ends), ``--rounds`` times; medians over the rounds. **Target: p99 while
   training <= 1.5x idle.**
2. The job's wall time (accepted -> registered, and the worker's own start -> finish) against ``adaptformer
   train`` alone on the same examples and knobs, interleaved, medians.

Examples: ``--per-class`` Fashion-MNIST training images of ``--classes`` classes as ``class/image`` PNGs in a
zip (generated coloured images when the Debian package is missing). Everything runs on one machine; on a shared
or small CPU the numbers move from run to run: read the medians and the spread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from adaptformer_server.jobs.manager import default_train_threads
from benchmarks.machine import cpu_model
from benchmarks.server_load import httpx_load, wrk_load
from tests.support import ServerProcess, encode

ADMIN = "training-load-admin-key-0123"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CLASSES = [0, 1, 7, 8, 9]  # t-shirt/top, trouser, sneaker, bag, ankle boot


def examples(root: Path, per_class: int, classes: int) -> tuple[Path, bytes, list[bytes], str]:
    """Writes ``root/<class>/<n>.png``; returns the folder, its zip, a few held-out PNGs and the data's name."""
    from adaptformer.data.fashion_mnist import FASHION_MNIST_LABELS, load_fashion_mnist
    from adaptformer.errors import DataError

    try:
        x, y = load_fashion_mnist("train")
        source = "Fashion-MNIST"
        pick = {c: np.flatnonzero(y == c) for c in CLASSES[:classes]}
        items = {FASHION_MNIST_LABELS[c].replace("/", "-"): [x[i] for i in idx[:per_class]] for c, idx in pick.items()}
        probes = [x[i] for c in pick for i in pick[c][per_class : per_class + 4]]
    except DataError:
        source = "generated colours"
        rng = np.random.default_rng(0)
        hues = [(200, 40, 40), (40, 190, 60), (40, 60, 210), (200, 200, 40), (180, 60, 200)][:classes]
        items = {f"c{k}": [np.clip(rng.normal(h, 30, (28, 28, 3)), 0, 255).astype(np.uint8) for _ in range(per_class)]
                 for k, h in enumerate(hues)}  # fmt: skip
        probes = [v[0] for v in items.values()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for label, images in items.items():
            (root / label).mkdir(parents=True, exist_ok=True)
            for i, arr in enumerate(images):
                data = encode(Image.fromarray(arr))
                (root / label / f"{i:04d}.png").write_bytes(data)
                z.writestr(f"{label}/{i:04d}.png", data)
    return root, buf.getvalue(), [encode(Image.fromarray(p)) for p in probes], source


def submit(url: str, data: bytes, knobs: dict) -> str:
    files = {"examples": ("examples.zip", data, "application/zip")}
    r = httpx.post(f"{url}/tasks/bench/train", params=knobs, files=files, headers=AUTH, timeout=120)
    r.raise_for_status()
    return r.json()["job"]


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/jobs/{job_id}", headers=AUTH, timeout=60).json()


def wait_for(url: str, job_id: str, statuses: set[str], timeout: float = 1800) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(url, job_id)
        if info["status"] in statuses or info["status"] in ("succeeded", "failed", "cancelled"):
            return info
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not {statuses} in {timeout} s")


def wait_until_epoch(url: str, job_id: str, epoch: int, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job(url, job_id)
        if info["epoch"] >= epoch or info["status"] in ("succeeded", "failed", "cancelled"):
            return info
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not at epoch {epoch} in {timeout} s")


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (dt.datetime.strptime(b, fmt) - dt.datetime.strptime(a, fmt)).total_seconds()


def cli_alone(folder: Path, knobs: dict, out: Path, threads: int) -> dict:
    """``adaptformer train`` on the same examples and knobs, in a fresh process, nothing else running."""
    cmd = [sys.executable, "-m", "adaptformer.cli", "train", "--task", "bench", "--data", str(folder), "--quiet",
           "--out", str(out), "--epochs", str(knobs["epochs"]), "--bottleneck", str(knobs["bottleneck"]),
           "--scale", str(knobs["scale"]), "--lr", str(knobs["lr"]), "--batch-size", str(knobs["batch_size"]),
           "--device", "cpu"]  # fmt: skip
    # the worker's thread count (1 on up to 4 cores): torch's default of one thread per core spins on a loaded
    # machine (docs/ARCHITECTURE.md, "CPU threads")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    metrics = json.loads(out.with_name("bench.metrics.json").read_text())
    return {"wall_s": round(wall, 2), "train_s": metrics["seconds"], "val_top1": metrics["metrics"]["val_top1"]}


def pct_row(row: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20, help="the job's epochs (the server's default)")
    p.add_argument("--load-epochs", type=int, default=500, help="epochs of the job trained during the load windows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0, help="length of one load window")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tool", choices=["wrk", "httpx"], default="wrk")
    p.add_argument("--quick", action="store_true", help="1 round of 8 s windows")
    p.add_argument("--out", type=Path, help="Markdown report (and .json beside it)")
    p.add_argument("--note", default="", help="a line for the report's header")
    p.add_argument("--rounds-from", type=Path, help="write the report from a run's printed round lines")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.per_class, args.epochs = 1, 8.0, 20, 10
    knobs = {"epochs": args.epochs, "bottleneck": 16, "scale": 0.5, "lr": 0.005, "batch_size": 16}
    load_fn = wrk_load if args.tool == "wrk" else httpx_load
    if args.rounds_from:  # a report again from a run's JSON (its rounds, command, date and machine kept)
        saved = json.loads(args.rounds_from.read_text())
        report(args, argv, saved["rounds"], 0.0, (0.0,) * 3, "", saved=saved)
        return
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adaptformer-trainload-") as tmp:
        work = Path(tmp)
        folder, data, probes, source = examples(work / "examples", args.per_class, args.classes)
        store = work / "store"
        flags = ["--store", store, "--threads", "1", "--log-level", "warning"]
        rounds = []
        alone = []
        with ServerProcess(
            flags,
            log=work / "server.log",
            env={"ADAPTFORMER_ADMIN_KEY": ADMIN, "ADAPTFORMER_TRAIN_MAX_EPOCHS": "100000"},
        ) as server:
            url = server.url
            payloads = probes[:8]
            # the demo fashion adapter as task0: the name benchmarks.server_load's wrk script asks for
            demo = Path(__file__).resolve().parents[1] / "adapters" / "adaptformer" / "demo" / "fashion.safetensors"
            files = {"file": ("fashion.safetensors", demo.read_bytes())}
            httpx.post(
                f"{url}/adapters", files=files, data={"task": "task0"}, headers=AUTH, timeout=60
            ).raise_for_status()
            for r in range(args.rounds):
                idle = load_fn(url, args.concurrency, args.seconds, payloads, ["task0"])
                # a long job (--load-epochs) so that it trains through the whole window; cancelled after it
                job_id = submit(url, data, {**knobs, "epochs": args.load_epochs})
                wait_until_epoch(url, job_id, 1)
                training = load_fn(url, args.concurrency, args.seconds, payloads, ["task0"])
                during = job(url, job_id)
                httpx.delete(f"{url}/jobs/{job_id}", headers=AUTH, timeout=60)
                wait_for(url, job_id, set())
                # the job alone (no /predict load), then the CLI alone: interleaved with the loaded rounds
                quiet_id = submit(url, data, knobs)
                quiet = wait_for(url, quiet_id, set())
                cli = cli_alone(folder, knobs, work / "cli" / "bench.safetensors", default_train_threads())
                row = {
                    "round": r + 1,
                    "idle": pct_row(idle),
                    "training": pct_row(training),
                    "job_running_at_window_end": during["status"] == "running",
                    "epoch_at_window_end": during["epoch"],
                    "epochs_per_s_during_load": round(
                        (during["epoch"] - 1) / args.seconds, 3
                    ),  # from the window's start (epoch >= 1)
                    "quiet_job": {
                        "status": quiet["status"],
                        "val_top1": quiet.get("val_top1"),
                        "wall_s": _seconds(quiet["created"], quiet["finished"]),
                        "worker_s": _seconds(quiet["started"], quiet["finished"]),
                    },
                    "cli": cli,
                }
                rounds.append(row)
                alone.append(cli)
                print(json.dumps(row), flush=True)
    report(args, argv, rounds, started, load_before, source)


def report(
    args: argparse.Namespace,
    argv: list[str] | None,
    rounds: list[dict],
    started: float,
    load_before: tuple[float, ...],
    source: str,
    saved: dict | None = None,
) -> None:
    """The summary (medians over the rounds), printed and written as JSON and Markdown."""
    med = statistics.median
    summary = {
        "idle_p50_ms": med(r["idle"]["p50_ms"] for r in rounds),
        "idle_p99_ms": med(r["idle"]["p99_ms"] for r in rounds),
        "training_p50_ms": med(r["training"]["p50_ms"] for r in rounds),
        "training_p99_ms": med(r["training"]["p99_ms"] for r in rounds),
        "p99_ratio_median_of_rounds": med(r["training"]["p99_ms"] / r["idle"]["p99_ms"] for r in rounds),
        "idle_rps": med(r["idle"]["rps"] for r in rounds),
        "training_rps": med(r["training"]["rps"] for r in rounds),
        "job_wall_s_quiet": med(r["quiet_job"]["wall_s"] for r in rounds),
        "job_epochs_per_s_during_load": med(r["epochs_per_s_during_load"] for r in rounds),
        "job_epochs_per_s_quiet": med(args.epochs / r["quiet_job"]["worker_s"] for r in rounds),
        "cli_wall_s": med(r["cli"]["wall_s"] for r in rounds),
        "job_val_top1": med(r["quiet_job"]["val_top1"] or 0 for r in rounds),
        "cli_val_top1": med(r["cli"]["val_top1"] for r in rounds),
    }
    summary["p99_ratio"] = summary["training_p99_ms"] / summary["idle_p99_ms"]
    summary["p50_ratio"] = summary["training_p50_ms"] / summary["idle_p50_ms"]
    summary["p50_ratio_median_of_rounds"] = med(r["training"]["p50_ms"] / r["idle"]["p50_ms"] for r in rounds)
    summary["job_vs_cli_median_of_rounds"] = med(r["quiet_job"]["wall_s"] / r["cli"]["wall_s"] for r in rounds)
    summary["rps_ratio"] = summary["training_rps"] / summary["idle_rps"]
    summary["errors"] = sum(r["idle"]["errors"] + r["training"]["errors"] for r in rounds)
    summary["job_vs_cli"] = summary["job_wall_s_quiet"] / summary["cli_wall_s"]
    out = {
        "command": "python -m benchmarks.training_load " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "load_average_at_start": [round(v, 2) for v in load_before],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "data": f"{source}: {args.classes} classes x {args.per_class} images (20% held out for validation)",
        "knobs": {"epochs": args.epochs, "bottleneck": 16, "scale": 0.5, "lr": 0.005, "batch_size": 16},
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "tool": args.tool,
        "note": args.note,
        "summary": {k: round(v, 3) for k, v in summary.items()},
        "rounds": rounds,
    }
    if saved is not None:
        keep = ("command", "date", "machine", "load_average_at_start", "load_average_at_end", "data", "knobs",
                "concurrency", "seconds", "tool", "note")  # fmt: skip
        out.update({k: saved[k] for k in keep})
    print(json.dumps(out["summary"], indent=2))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
        args.out.write_text(render(out))


def render(r: dict) -> str:
    s = r["summary"]
    met = "met" if s["p99_ratio"] <= 1.5 else "missed"
    lines = [
        "# Training jobs against inference",
        "",
        f"`{r['command']}`, {r['date']}; {r['machine']}; load average at the start "
        f"{r['load_average_at_start']}, at the end {r['load_average_at_end']}."
        + (f" {r['note']}" if r["note"] else ""),
        "",
        f"Server: embedded backbone (shipped weights), `--threads 1`; /predict on the demo `fashion` adapter (as `task0`), "
        f"{r['concurrency']} closed-loop clients ({r['tool']}), {r['seconds']:g} s windows, idle and training "
        "windows alternating; the training worker at its defaults (1 torch thread, nice 10). "
        f"Examples: {r['data']}; knobs {r['knobs']}. Medians over {len(r['rounds'])} rounds; the load "
        "generator, the server and the worker share this machine's cores, so one run differs from the next.",
        "",
        "| | p50 ms | p99 ms | requests/s |",
        "|---|---:|---:|---:|",
        f"| idle | {s['idle_p50_ms']:.1f} | {s['idle_p99_ms']:.1f} | {s['idle_rps']:.0f} |",
        f"| while a job trains | {s['training_p50_ms']:.1f} | {s['training_p99_ms']:.1f} | {s['training_rps']:.0f} |",
        "",
        f"**p99 while training / idle: {s['p99_ratio']:.2f}** (medians; median of the per-round ratios "
        f"{s['p99_ratio_median_of_rounds']:.2f}); target <= 1.5: {met}. p50 while training / idle: "
        f"{s['p50_ratio']:.2f} (median of the per-round ratios {s['p50_ratio_median_of_rounds']:.2f}); "
        f"requests/s while training / idle: {s['rps_ratio']:.2f}.",
        "",
        "| wall time, s | median |",
        "|---|---:|",
        f"| job, accepted -> registered, server otherwise idle | {s['job_wall_s_quiet']:.1f} |",
        f"| `adaptformer train` alone (fresh process, the worker's thread count) | {s['cli_wall_s']:.1f} |",
        "",
        f"Failed /predict requests in all windows: {s['errors']:.0f}. "
        f"Job / CLI: {s['job_vs_cli']:.2f}x (median of the per-round ratios "
        f"{s['job_vs_cli_median_of_rounds']:.2f}). Epochs per second while /predict ran at full load: "
        f"{s['job_epochs_per_s_during_load']:.2f} (the long job of the load windows), the quiet job's whole run "
        f"(worker start to registered): {s['job_epochs_per_s_quiet']:.2f}. Validation top-1: job {s['job_val_top1']:.3f}, CLI "
        f"{s['cli_val_top1']:.3f}. Job times are whole seconds (the records' time stamps).",
        "",
        "## Rounds",
        "",
        "| round | idle p50 / p99 ms | training p50 / p99 ms | job running at window end (epoch) | quiet job wall s "
        "| CLI wall s |",
        "|---:|---|---|---|---|---:|",
    ]
    for row in r["rounds"]:
        i, t = row["idle"], row["training"]
        lines.append(
            f"| {row['round']} | {i['p50_ms']:.1f} / {i['p99_ms']:.1f} | {t['p50_ms']:.1f} / {t['p99_ms']:.1f} | "
            f"{'yes' if row['job_running_at_window_end'] else 'no'} ({row['epoch_at_window_end']}) | "
            f"{row['quiet_job']['wall_s']} | {row['cli']['wall_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
