"""The GPU check of the engine: mixed-task ratios against plain timm, half precision, and a server saturation run.

    python -m benchmarks.device_check [--quick] [--out docs/benchmarks] [--skip-server]

1. Engine vs plain: ViT-B/16 (random weights, 224 px) in float16 and bfloat16, batches of 64 and 256, with 1,
   16 and 64 tasks mixed (d^=64 in all 12 blocks, 10-class heads); each row alternates plain timm
   ``forward_features`` and the engine (``reps`` repetitions of ``iters`` batches, CUDA-synchronised), ratio =
   median of the paired ratios. At 64 tasks the forced paths (slices, gathered, grouped) are measured too, and
   the CUDA kernels of one forward are counted with ``torch.profiler``. Every path's logits are compared with the
   slice path's in the same dtype and with float32 on one mixed batch.
2. Server saturation (needs fastapi, uvicorn and pydantic-settings): ``python -m adaptformer_server`` with ViT-B/16
   (the same random weights from a file) in float16, 16 adapters, max batch 64, 128 closed-loop clients (wrk where
   installed, else httpx) posting PNGs at 224, JPEGs at 224 and JPEGs at 1024x768, with device decoding (nvJPEG,
   resize on the GPU) on and off, against the engine alone on batches of 64 mixed tasks. Skipped with a message
   when the server cannot import.

Writes ``gpu.json`` and ``gpu.md`` to ``--out``. ``--quick`` runs a tiny ViT on whatever device there is (a smoke
test of the script, not a result) and writes ``gpu_quick.*`` to a temporary folder unless ``--out`` says where.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import timm
import torch

import adaptformer as af
from adaptformer.gathered import grouped_mm_works
from benchmarks.engine_throughput import paired_times, random_task, sync_device
from benchmarks.machine import cpu_model, table

TARGET_ENGINE = 0.95  # at 64 tasks
TARGET_SERVER = 0.9
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def cuda_kernels(fn, device: torch.device) -> int | None:  # type: ignore[no-untyped-def]
    """CUDA kernels one call of ``fn`` launches (``None`` off CUDA or when the profiler is unavailable)."""
    if device.type != "cuda":
        return None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync_device(device)
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:  # the profiler is optional here: a count is a bonus, not the check
        return None


def engine_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        torch.manual_seed(0)
        vit = timm.create_model(args.model, pretrained=False, num_classes=0, **args.model_kwargs)
        vit = vit.to(device, dtype).eval().requires_grad_(False)
        engine = af.MultiTaskViT(vit)
        config = af.AdapterConfig(bottleneck=args.bottleneck)
        for k in range(max(args.tasks)):
            name = f"t{k}"
            engine.add_task(name, random_task(name, engine.vit, config, engine.fingerprint, seed=k))
        size = vit.patch_embed.img_size[0]
        for batch in args.batches:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device, dtype)
            for tasks in args.tasks:
                names = [f"t{i % tasks}" for i in range(batch)]
                for path in ["auto"] + (["slices", "gathered", "grouped"] if tasks == max(args.tasks) else []):
                    engine.path = path
                    chosen = engine.choose_path(af.engine._plan(names, engine.tasks), device, dtype)
                    if path != "auto" and chosen != path:
                        continue  # e.g. grouped where torch._grouped_mm does not run: auto's row says so

                    plain = functools.partial(vit.forward_features, x)
                    mixed = functools.partial(engine, x, names)
                    base, eng = paired_times(
                        plain, mixed, warmup=args.warmup, reps=args.reps, iters=args.iters, device=device
                    )
                    with torch.inference_mode():
                        kernels = (cuda_kernels(plain, device), cuda_kernels(mixed, device))
                    row = {
                        "dtype": dtype_name,
                        "batch": batch,
                        "tasks": tasks,
                        "path": path,
                        "ran": chosen,
                        "plain_images_per_s": round(batch / statistics.median(base), 1),
                        "engine_images_per_s": round(batch / statistics.median(eng), 1),
                        "ratio": round(statistics.median(b / e for b, e in zip(base, eng, strict=True)), 4),
                        "plain_kernels": kernels[0],
                        "engine_kernels": kernels[1],
                    }
                    rows.append(row)
                    print(
                        f"{dtype_name} batch {batch:4d} tasks {tasks:3d} path {path:>8} ({chosen}): plain "
                        f"{row['plain_images_per_s']:9.1f} img/s, engine {row['engine_images_per_s']:9.1f} img/s, "
                        f"ratio {row['ratio']:.3f}, kernels {kernels[0]} / {kernels[1]}",
                        flush=True,
                    )
        engine.path = "auto"
        del engine, vit
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def agreement_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Each path's logits against the slice path in the same dtype, and against float32, on a mixed batch."""
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, num_classes=0, **args.model_kwargs).eval()
    base.requires_grad_(False)
    config = af.AdapterConfig(bottleneck=args.bottleneck)
    tasks = max(args.tasks)
    batch = min(args.batches)
    size = base.patch_embed.img_size[0]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(7)).to(device)
    names = [f"t{i % tasks}" for i in range(batch)]
    out = {}
    fingerprint = af.MultiTaskViT(copy.deepcopy(base)).fingerprint
    torch.manual_seed(1)  # the same tasks (down weights and heads draw from the global generator) for every dtype
    made = [random_task(f"t{k}", base, config, fingerprint, seed=k) for k in range(tasks)]
    for dtype_name in ["float32", *args.dtypes]:
        dtype = torch.float32 if dtype_name == "float32" else DTYPES[dtype_name]
        engine = af.MultiTaskViT(copy.deepcopy(base).to(device, dtype), fingerprint=fingerprint)
        for k, task in enumerate(made):
            engine.add_task(f"t{k}", task)
        for path in ["slices", "gathered", "grouped"]:
            engine.path = path
            out[dtype_name, path] = torch.stack([o.float() for o in engine(x, names)]).cpu()
        del engine
    ref = out["float32", "slices"]
    rows = []
    for (dtype_name, path), logits in out.items():
        rows.append(
            {
                "dtype": dtype_name,
                "path": path,
                "max_diff_vs_slices_same_dtype": round((logits - out[dtype_name, "slices"]).abs().max().item(), 5),
                "max_diff_vs_float32": round((logits - ref).abs().max().item(), 5),
                "max_abs_logit_float32": round(ref.abs().max().item(), 4),
            }
        )
        print(f"agreement {dtype_name} {path}: {rows[-1]}", flush=True)
    return rows


def server_available() -> str | None:
    """Why the server part cannot run here (``None``: it can)."""
    missing = [
        m
        for m in ("fastapi", "fastapi_offline", "uvicorn", "pydantic_settings", "httpx")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        return f"missing Python packages: {', '.join(missing)}"
    return None


def jpegs(n: int, width: int, height: int) -> list[bytes]:
    """Photo-like JPEGs (gradients and mild noise, quality 90): what phones and cameras send."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:height, 0:width]
        arr = np.stack([x * 255 // width, y * 255 // height, (x + y + 37 * i) % 256], -1).astype(np.float32)
        arr += rng.normal(0, 12, arr.shape).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def server_part(args: argparse.Namespace, device: torch.device) -> dict:
    """Server saturation against the engine alone, both on batches of ``args.server_batch`` mixed tasks: PNGs at
    the model's size, then JPEGs at the model's size and at photo size, with device decoding on and off."""
    from safetensors.torch import save_file

    from benchmarks import server_load as sl

    dtype = args.server_dtype
    tool = "wrk" if sl.shutil.which("wrk") else "httpx"
    with tempfile.TemporaryDirectory(prefix="adaptformer-gpu-") as tmp:
        work = Path(tmp)
        if args.quick:  # the server builds timm names with their default sizes: the embedded ViT is the tiny one
            ns = argparse.Namespace(backbone="embedded", weights=None, device=str(device))
        else:
            torch.manual_seed(0)
            vit = timm.create_model(args.model, pretrained=False, num_classes=0).eval()
            weights = work / "backbone.safetensors"
            save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
            ns = argparse.Namespace(backbone=args.model, weights=weights, device=str(device))
        vit, _ = sl.backbone_for(ns, work)
        size = vit.patch_embed.img_size[0]
        store = work / "store"
        tasks = sl.task_store(store, vit, args.bottleneck, args.server_tasks)
        photo = (64, 48) if args.quick else (1024, 768)
        inputs = {
            f"png {size}": sl.images(32, size),
            f"jpeg {size}": jpegs(32, size, size),
            f"jpeg {photo[0]}x{photo[1]}": jpegs(32, *photo),
        }
        settings = {
            "max_batch_size": args.server_batch,
            "max_wait_ms": 5,
            "queue_size": 8192,
            "slots": 64,
            "dtype": dtype,
        }
        engine = sl.engine_alone(vit, str(device), args.bottleneck, batch=args.server_batch, reps=args.reps)
        engine_ips = engine["engine_images_per_s"]
        print(f"engine alone, batches of {args.server_batch}: {engine_ips:.1f} img/s", flush=True)
        runs = []
        # The server's two shapes: one process, and the front tier (cores - 2 front processes + the engine process,
        # which batches them all; there the fronts decode on the CPU, so device decoding changes nothing)
        shapes = {"one process": 1, f"{args.fronts} fronts": args.fronts}
        for shape, workers in shapes.items():
            for decode in ("on", "off"):
                flags = {**settings, "device_decode": decode == "on", "workers": workers}
                with sl.Server(ns, store, **flags) as server:
                    for name, payloads in inputs.items():
                        if name.startswith("png") and decode == "off":
                            continue  # PNGs decode on the CPU either way: measured once
                        for c in args.concurrency:
                            row = sl.measured(tool, server, c, args.server_seconds, payloads, tasks)
                            ratio = round(row["rps"] / engine_ips, 4)
                            row.update(input=name, device_decode=decode, shape=shape, workers=workers, ratio=ratio)
                            print(
                                f"server ({shape}), {name}, device decoding {decode}, concurrency {c}: "
                                f"{row['rps']:.1f} img/s (mean batch {row['mean_batch']}), ratio {ratio:.3f}",
                                flush=True,
                            )
                            runs.append(row)
                    if decode == "on" and workers == 1:  # what the generator reaches against a route doing nothing
                        ceiling = sl.measured(tool, server, max(args.concurrency), args.server_seconds, [], [])
                        print(f"generator ceiling (GET /healthz): {ceiling['rps']:.1f} req/s", flush=True)
        best = max(runs, key=lambda r: r["rps"])
        return {
            "model": ns.backbone,
            "tasks": args.server_tasks,
            "dtype": dtype,
            "max_batch_size": args.server_batch,
            "tool": tool,
            "levels": runs,
            "generator_ceiling": ceiling,
            "engine": engine,
            "server_best_images_per_s": round(best["rps"], 1),
            "engine_images_per_s": round(engine_ips, 1),
            "ratio": round(best["rps"] / engine_ips, 4),
        }


def render(r: dict) -> str:
    a = r["settings"]
    lines = [
        "# Engine on a GPU",
        "",
        f"`{r['command']}` on {r['machine']['device_name']} ({r['date']}); torch {r['machine']['torch']}, timm "
        f"{r['machine']['timm']}; {a['model']} (random weights), d^={a['bottleneck']} in all blocks, 10-class "
        f"heads; {a['reps']} interleaved repetitions of {a['iters']} batches, ratio = median of paired ratios "
        "(engine speed / plain timm `forward_features` speed). `path`: what was asked (`auto`: the engine's "
        "choice), `ran`: what ran. Kernels: CUDA kernels of one forward (torch.profiler), plain / engine.",
        "",
        f"`torch._grouped_mm` usable: {r['grouped_mm']}.",
        "",
    ]
    lines += table(
        ["dtype", "path", "ran", "batch", "tasks", "plain img/s", "engine img/s", "ratio", "kernels plain / engine"],
        (
            [
                row["dtype"],
                row["path"],
                row["ran"],
                row["batch"],
                row["tasks"],
                row["plain_images_per_s"],
                row["engine_images_per_s"],
                f"{row['ratio']:.3f}",
                f"{row['plain_kernels']} / {row['engine_kernels']}",
            ]
            for row in r["engine"]
        ),
        left=3,
    )
    top = [row for row in r["engine"] if row["tasks"] == max(a["tasks"]) and row["path"] == "auto"]
    if top:
        worst = min(row["ratio"] for row in top)
        verdict = "met" if worst >= TARGET_ENGINE else "missed"
        lines += [
            "",
            f"Target (ratio >= {TARGET_ENGINE} at {max(a['tasks'])} tasks): **{verdict}** (lowest {worst:.3f}).",
        ]
    lines += [
        "",
        f"Agreement on one batch of {min(a['batches'])} rows mixing {max(a['tasks'])} tasks: largest difference of "
        "any logit from the slice path in the same dtype, and from the float32 slice path.",
        "",
    ]
    lines += table(
        ["dtype", "path", "vs slices, same dtype", "vs float32", "largest float32 logit"],
        (
            [g[k] for k in ("dtype", "path", "max_diff_vs_slices_same_dtype", "max_diff_vs_float32")]
            + [g["max_abs_logit_float32"]]
            for g in r.get("agreement", [])
        ),
        left=2,
    )
    lines += ["", "## Server saturation", ""]
    s = r.get("server")
    if isinstance(s, dict):
        lines += [
            f"{s['model']}, {s['tasks']} tasks, {s['dtype']}, max batch {s['max_batch_size']}, closed-loop clients "
            f"({s['tool']}) posting one image each; the engine alone on batches of {s['max_batch_size']} mixed tasks: "
            f"{s['engine_images_per_s']:.1f} img/s. Device decoding: JPEGs decoded by nvJPEG and resized on the GPU "
            "(`--device-decode`, the default on CUDA); off: PIL on the CPU's decode threads. CPU: cores used.",
            "",
        ]
        columns = ["shape", "input", "device decoding", "clients", "img/s", "mean batch", "p50 ms", "p99 ms"]
        lines += table(
            [*columns, "server CPU", "generator CPU", "errors", "server / engine"],
            (
                [
                    lv.get("shape", "one process"),
                    lv["input"],
                    lv["device_decode"],
                    lv["concurrency"],
                    lv["rps"],
                    lv["mean_batch"],
                    lv["p50_ms"],
                    lv["p99_ms"],
                    f"{lv['server_cpu']:.2f}",
                    f"{lv['generator_cpu']:.2f}",
                    lv["errors"],
                    f"{lv['ratio']:.3f}",
                ]
                for lv in s["levels"]
            ),
            left=3,
        )
        c = s["generator_ceiling"]
        lines.append(
            f"\nThe generator's ceiling (GET /healthz, {c['concurrency']} clients): {c['rps']:.0f} req/s, generator "
            f"CPU {c['generator_cpu']:.2f}."
        )
        for name in dict.fromkeys(lv["input"] for lv in s["levels"]):
            best = max((lv for lv in s["levels"] if lv["input"] == name), key=lambda lv: lv["rps"])
            verdict = "met" if best["ratio"] >= TARGET_SERVER else "missed"
            lines.append(
                f"\n{name}: best {best['rps']:.1f} img/s ({best.get('shape', 'one process')}, device decoding "
                f"{best['device_decode']}), server / engine "
                f"{best['ratio']:.3f}, target >= {TARGET_SERVER}: **{verdict}**."
            )
    else:
        lines.append(f"Not run: {s}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny ViT, few repetitions: a smoke test of the script")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default docs/benchmarks; quick: a temporary folder)"
    )
    p.add_argument("--skip-server", action="store_true")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "adaptformer-device-check" if args.quick else Path("docs/benchmarks")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.model, args.model_kwargs = "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}
        args.batches, args.tasks, args.reps, args.iters, args.warmup = [8, 16], [1, 4, 8], 3, 2, 1
        args.dtypes = ["bfloat16"] if device.type == "cpu" else ["float16", "bfloat16"]
        args.server_tasks, args.server_batch, args.concurrency, args.server_seconds = 4, 8, [8], 2.0
    else:
        args.model, args.model_kwargs = "vit_base_patch16_224", {}
        args.batches, args.tasks, args.reps, args.iters, args.warmup = [64, 256], [1, 16, 64], 9, 10, 3
        args.dtypes = ["float16", "bfloat16"]
        args.server_tasks, args.server_batch, args.concurrency, args.server_seconds = 16, 64, [128], 8.0
    args.bottleneck = 64 if not args.quick else 16
    args.server_dtype = "bfloat16" if device.type == "cuda" else "float32"
    args.fronts = max(2, (os.cpu_count() or 4) - 2)  # the front tier: one core for the engine, one for the rest
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    result: dict = {
        "benchmark": "device_check",
        "command": "python -m benchmarks.device_check " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": started,
        "machine": {
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
            "device": str(device),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "grouped_mm": {d: grouped_mm_works(device, DTYPES[d]) for d in args.dtypes},
    }
    result["engine"] = engine_rows(args, device)
    result["agreement"] = agreement_rows(args, device)
    if args.skip_server:
        result["server"] = "skipped (--skip-server)"
    elif (why := server_available()) is not None:
        result["server"] = f"skipped: {why} (carry their wheels; see benchmarks/device_check.sh)"
        print(result["server"], flush=True)
    else:
        try:
            result["server"] = server_part(args, device)
        except Exception as e:  # the engine rows are still worth writing
            traceback.print_exc()
            result["server"] = f"failed: {type(e).__name__}: {e}"
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu" if not args.quick else "gpu_quick"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(render(result))
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.md')} in {result['seconds']} s", flush=True)
    return result


if __name__ == "__main__":
    main()
