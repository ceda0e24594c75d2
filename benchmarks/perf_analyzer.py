"""Triton's perf_analyzer against the server's KServe v2 routes, beside benchmarks/server_load.py's load.

    python -m benchmarks.perf_analyzer --out docs/benchmarks/perf_analyzer.md
    python -m benchmarks.perf_analyzer --quick          # one round, short windows (a smoke run)

Starts the server as ``make serve`` does (``python -m adaptformer_server serve``: the embedded backbone and the
demo adapters, in a temporary store) and measures task ``fashion`` at concurrency 1, 8 and 32 with three load
generators, interleaved (each round runs every generator at every level, the order rotated per round):

- ``perf_analyzer, FP32``: perf_analyzer's own generated data (``--input-data zero``) for the ``input`` tensor
  (``-H 'X-Model-Inputs: input'``: the metadata and config list only that input, so perf_analyzer sends only it);
- ``perf_analyzer, BYTES``: ``--input-data`` JSON holding one encoded PNG (base64) for the ``image`` input;
- ``server_load``: ``benchmarks.server_load.measured`` (wrk when installed, as server_load picks it), ``POST
  /predict`` with the same PNG as the body.

Images/s are perf_analyzer's ``Inferences/Second`` (batch 1: one image a request) and server_load's requests/s;
p99 is each tool's own. The figures are medians over the rounds.

perf_analyzer is the binary in the ``tritonclient`` 2.40.0 wheel (the dev extra installs it in the venv's bin/);
it needs ``libb64.so.0d`` (Debian ``libb64-0d``, ``make system-deps``) and ``libcudart.so.12`` (PyPI's
``nvidia-cuda-runtime-cu12``, dev extra), which :func:`find` puts on its ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import importlib.util
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.machine import header, report_head, write_report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fashion-shirt.png"
INPUTS_HEADER = "X-Model-Inputs"
LEVELS = (1, 8, 32)
MEDIANS = ("images_s", "p50_ms", "p99_ms", "server_cpu_ms_per_image")
SERVE = (sys.executable, "-m", "adaptformer_server", "serve")

__all__ = ["Missing", "PerfAnalyzer", "Run", "bytes_input_data", "find", "run"]


class Missing(RuntimeError):
    """perf_analyzer, or a library it needs, is not installed (the message says what and how)."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and the environment it runs in (``LD_LIBRARY_PATH`` holding libcudart.so.12)."""

    exe: Path
    env: dict[str, str]

    def command(self, *args: object) -> list[str]:
        return [str(self.exe), *map(str, args)]


def _cudart_dir() -> Path | None:
    """The lib folder of the installed ``nvidia-cuda-runtime-cu12`` package, when it holds libcudart.so.12."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime") if importlib.util.find_spec("nvidia") else None
    for location in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(location) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def find() -> PerfAnalyzer:
    """perf_analyzer from this venv (or PATH), with libcudart's folder on its ``LD_LIBRARY_PATH``; checked with
    ``ldd`` and ``--version``.

    Raises:
        Missing: the binary or a library is not there.
    """
    exe = Path(sys.executable).with_name("perf_analyzer")
    if not exe.exists():
        found = shutil.which("perf_analyzer")
        if found is None:
            raise Missing("perf_analyzer is not installed: pip install -e '.[dev]' (tritonclient 2.40.0 ships it)")
        exe = Path(found)
    env = dict(os.environ)
    lib = _cudart_dir()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    try:
        ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, env=env, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Missing(f"cannot check perf_analyzer's libraries with ldd: {e}") from None
    missing = sorted({line.split()[0] for line in ldd.splitlines() if "not found" in line})
    if missing:
        how = {"libb64.so.0d": "apt-get install libb64-0d (make system-deps)",
               "libcudart.so.12": "pip install nvidia-cuda-runtime-cu12 (the dev extra)"}  # fmt: skip
        raise Missing(f"perf_analyzer lacks {', '.join(missing)}: " + "; ".join(how.get(m, m) for m in missing))
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, timeout=60)
    if version.returncode != 0:
        raise Missing(f"perf_analyzer --version exited {version.returncode}: {version.stderr or version.stdout}")
    return PerfAnalyzer(exe, env)


def bytes_input_data(images: list[bytes], path: Path) -> Path:
    """perf_analyzer's ``--input-data`` JSON for the ``image`` input: one step per image, each the base64 of the
    serialized BYTES tensor of one element (a 4-byte little-endian length, then the file's bytes), which is what
    perf_analyzer sends as the binary tensor data."""
    steps = [{"image": {"b64": base64.b64encode(struct.pack("<I", len(i)) + i).decode()}} for i in images]
    path.write_text(json.dumps({"data": steps}))
    return path


@dataclass(frozen=True)
class Run:
    """What one perf_analyzer run reported, per concurrency level (its CSV and its profile export)."""

    rows: list[dict[str, float]]  # concurrency, images_s, p50_ms, p99_ms, requests
    output: str

    @property
    def requests(self) -> int:
        return int(sum(r["requests"] for r in self.rows))


def run(
    pa: PerfAnalyzer,
    url: str,
    model: str,
    concurrency: list[int] | tuple[int, ...],
    *,
    data: Path | None = None,
    window: list[str] | tuple[str, ...] = ("--measurement-interval", "5000"),
    extra: list[str] | tuple[str, ...] = (),
    timeout: float = 600,
) -> Run:
    """perf_analyzer on ``model`` at ``url`` over HTTP; generated FP32 data for ``input`` without ``data``, else
    ``data`` (an ``--input-data`` JSON file).

    Raises:
        RuntimeError: perf_analyzer exited non-zero (its output in the message).
    """
    with tempfile.TemporaryDirectory(prefix="adaptformer-pa-") as tmp:
        report, export = Path(tmp) / "report.csv", Path(tmp) / "export.json"
        lo, hi = min(concurrency), max(concurrency)
        step = concurrency[1] - concurrency[0] if len(concurrency) > 1 else 1
        if list(range(lo, hi + 1, step)) != list(concurrency):
            raise ValueError(f"concurrency must be an arithmetic range, got {concurrency}")
        args: list[object] = ["-m", model, "-u", url.removeprefix("http://"), "-i", "http"]
        args += ["--concurrency-range", f"{lo}:{hi}:{step}", *window, "-f", report, "--profile-export-file", export]
        if data is None:
            args += ["--input-data", "zero", "-H", f"{INPUTS_HEADER}: input"]
        else:
            args += ["--input-data", data]
        done = subprocess.run(pa.command(*args, *extra), capture_output=True, text=True, env=pa.env, timeout=timeout)
        output = done.stdout + done.stderr
        if done.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer exited {done.returncode}:\n{output[-4000:]}")
        with report.open() as f:
            table = {int(r["Concurrency"]): r for r in csv.DictReader(f)}
        counts = {
            int(e["experiment"]["value"]): len(e["requests"]) for e in json.loads(export.read_text())["experiments"]
        }
    rows = [
        {
            "concurrency": c,
            "images_s": float(table[c]["Inferences/Second"]),
            "p50_ms": float(table[c]["p50 latency"]) / 1000,
            "p99_ms": float(table[c]["p99 latency"]) / 1000,
            "requests": counts[c],
        }
        for c in sorted(table)
    ]
    return Run(rows, output)


# -- the benchmark -----------------------------------------------------------------------------------------------
def _server_load_row(server: object, concurrency: int, seconds: float, payload: bytes, tool: str) -> dict:
    """benchmarks.server_load's measurement of one level: POST /predict?task=task0 with ``payload``."""
    from benchmarks import server_load

    row = server_load.measured(tool, server, concurrency, seconds, [payload], ["task0"])  # type: ignore[arg-type]
    return {"concurrency": concurrency, "images_s": row["rps"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
            "requests": row["requests"], "errors": row["errors"], "generator_cpu": row.get("generator_cpu"),
            "server_cpu": row.get("server_cpu"), "mean_batch": row.get("mean_batch")}  # fmt: skip


def _perf_analyzer_row(pa: PerfAnalyzer, url: str, concurrency: int, data: Path | None, window: int) -> dict:
    """One level: three windows within 25% of each other; once more within 50% when the machine's load does not
    allow that (perf_analyzer exits 2); the bound used is in the row."""
    for stability in (25, 50):
        try:
            done = run(pa, url, "fashion", [concurrency], data=data,
                       window=("--measurement-interval", str(window), "-s", str(stability)))  # fmt: skip
        except RuntimeError as e:
            if stability == 50 or "stable measurement" not in str(e):
                raise
            continue
        return done.rows[0] | {"stability_pct": stability}
    raise AssertionError("unreachable")


def _served(url: str) -> float:
    """Predictions the server answered so far (``adaptformer_predict_requests_total``, every task and status)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("adaptformer_predict_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _median(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 2) if values else float("nan")


def render(r: dict) -> str:
    lines = [
        *report_head("perf_analyzer against the KServe v2 routes, beside server_load", r),
        r["setup"],
        "",
        "| concurrency | perf_analyzer FP32 images/s | p99 ms | perf_analyzer BYTES (PNG) images/s | p99 ms | "
        "server_load /predict (PNG) images/s | p99 ms | BYTES / server_load | server CPU ms/image: FP32, BYTES, "
        "/predict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, m in r["medians"].items():
        fp, by, sl = m["perf_analyzer FP32"], m["perf_analyzer BYTES"], m["server_load"]
        ratio = by["images_s"] / sl["images_s"] if sl["images_s"] else float("nan")
        lines.append(
            f"| {c} | {fp['images_s']:.1f} | {fp['p99_ms']:.1f} | {by['images_s']:.1f} | {by['p99_ms']:.1f} | "
            f"{sl['images_s']:.1f} | {sl['p99_ms']:.1f} | {ratio:.2f} | "
            f"{fp['server_cpu_ms_per_image']:.2f}, {by['server_cpu_ms_per_image']:.2f}, "
            f"{sl['server_cpu_ms_per_image']:.2f} |"
        )
    lines += ["", f"Medians over {r['rounds']} interleaved rounds; every round's figures are in the JSON beside this."]
    if r.get("findings"):
        lines += ["", "## Findings", "", r["findings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tests.support import ServerProcess

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one round, 2 s windows (a smoke run)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="server_load seconds per level (default 10)")
    p.add_argument("--window-ms", type=int, default=None, help="perf_analyzer's measurement window (default 5000)")
    p.add_argument("--tool", choices=["httpx", "wrk"], default=None, help="server_load's generator (default: wrk)")
    p.add_argument("--out", type=Path, default=None, help="also write the report (Markdown) and its JSON here")
    p.add_argument("--note", default="")
    p.add_argument("--findings", type=Path, default=None, help="a Markdown file of findings to add to the report")
    args = p.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    window = args.window_ms or (2000 if args.quick else 5000)
    tool = args.tool or ("wrk" if shutil.which("wrk") else "httpx")
    pa = find()
    results: dict = header("benchmarks.perf_analyzer", argv, args.note)
    results |= {"rounds": rounds, "levels": list(LEVELS), "tool": tool, "window_ms": window, "seconds": seconds}
    payload = EXAMPLE.read_bytes()
    generators = ["perf_analyzer FP32", "perf_analyzer BYTES", "server_load"]
    raw: dict[str, dict[str, list[dict]]] = {str(c): {g: [] for g in generators} for c in LEVELS}
    with tempfile.TemporaryDirectory(prefix="adaptformer-pa-bench-") as tmp:
        work = Path(tmp)
        data = bytes_input_data([payload], work / "image.json")
        flags = ["--store", work / "store", "--log-level", "warning"]
        with ServerProcess(flags, command=SERVE, log=work / "server.log", ready_timeout=600) as server:
            # server_load's wrk script names tasks task0..; the demo adapter `fashion` again under that name.
            demo = ROOT / "adapters" / "adaptformer" / "demo" / "fashion.safetensors"
            with demo.open("rb") as f:
                r = httpx.post(f"{server.url}/adapters", files={"file": f}, data={"task": "task0"}, timeout=120)
            r.raise_for_status()
            info = httpx.get(f"{server.url}/readyz", timeout=30).json()
            results["server"] = {"command": "python -m adaptformer_server serve " + " ".join(map(str, flags)),
                                 "readyz": info}  # fmt: skip
            for k in range(rounds):
                for c in LEVELS:
                    order = generators[k % 3 :] + generators[: k % 3]
                    for g in order:
                        cpu, served = server.cpu_s(), _served(server.url)
                        if g == "server_load":
                            row = _server_load_row(server, c, seconds, payload, tool)
                        else:
                            row = _perf_analyzer_row(pa, server.url, c, None if g.endswith("FP32") else data, window)
                        n = _served(server.url) - served
                        row["served"] = n
                        row["server_cpu_ms_per_image"] = round(1000 * (server.cpu_s() - cpu) / n, 3) if n else None
                        row["round"] = k
                        raw[str(c)][g].append(row)
                        print(f"round {k} concurrency {c} {g}: {row['images_s']:.1f} images/s, "
                              f"p99 {row['p99_ms']:.1f} ms", flush=True)  # fmt: skip
    results["raw"] = raw
    results["medians"] = {
        c: {g: {key: _median(rows, key) for key in MEDIANS} for g, rows in by.items()} for c, by in raw.items()
    }
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    results["setup"] = (
        f"Server: `{results['server']['command']}` (the embedded backbone, the demo adapters; `fashion`, "
        f"28x28 inputs). perf_analyzer {pa.exe.name} 2.40.0 over HTTP, sync, `-p {window}` ms windows, `-s 25`; "
        f"FP32: `--input-data zero -H '{INPUTS_HEADER}: input'`; BYTES: `--input-data` JSON holding "
        f"{EXAMPLE.name} ({len(payload)} bytes). server_load: `measured()` with {tool}, {seconds:g} s per level, "
        f"`POST /predict?task=task0` (the same adapter file registered again as `task0`), body {EXAMPLE.name}."
    )
    if args.findings is not None:
        results["findings"] = args.findings.read_text().strip()
    write_report(args.out, render(results), results)


if __name__ == "__main__":
    main()
