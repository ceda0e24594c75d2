"""Engine throughput: MultiTaskViT mixed-task batches against plain timm ``forward_features`` on ViT-S/16, 224 px.

    python -m benchmarks.engine_throughput [--quick] [--device cpu|cuda] [--out docs/benchmarks]

Every row is measured interleaved with its own baseline (baseline, engine, baseline, engine, ...) on the same
batch and the same frozen weights, so slow drifts of the machine hit both alike. Times are medians over the
repetitions; the ratio is the median of the paired ratios baseline time / engine time (1.0: the engine costs
nothing over the plain backbone). Weights are random (timm's init, nothing is downloaded): speed does not depend
on their values. Writes ``engine_throughput.json`` and ``engine_throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

import adaptformer as af
from benchmarks.machine import cpu_model

MODEL = "vit_small_patch16_224"
TARGET_ROW = "engine-16x64"
TARGET_RATIO = 0.95
NUM_CLASSES = 10


@dataclass(frozen=True)
class Row:
    """One benchmark row.

    Attributes:
        key: Short id used in the JSON.
        label: What the row measures, for the table.
        kind: ``model`` (a single-task adapted timm model) or ``engine`` (MultiTaskViT).
        tasks: Distinct tasks in each batch.
        bottleneck: d^ of every task's branches (all blocks).
    """

    key: str
    label: str
    kind: str
    tasks: int
    bottleneck: int


ROWS = [
    Row("single-model-64", "single task: add_adapters model", "model", 1, 64),
    Row("engine-1x64", "engine, 1 task per batch", "engine", 1, 64),
    Row("engine-4x64", "engine, 4 tasks per batch", "engine", 4, 64),
    Row("engine-16x64", "engine, 16 tasks per batch", "engine", 16, 64),
    Row("engine-32x64", "engine, 32 tasks per batch", "engine", 32, 64),
    Row("engine-16x8", "engine, 16 tasks per batch", "engine", 16, 8),
    Row("engine-16x256", "engine, 16 tasks per batch", "engine", 16, 256),
]


@dataclass(frozen=True)
class Settings:
    batch: int
    warmup: int
    reps: int
    iters: int
    clock: str  # "wall" (perf_counter) or "cpu" (process_time: this process's CPU seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], iters: int, device: torch.device, clock: str = "wall") -> float:
    """Seconds per call of ``fn`` over ``iters`` calls, by the wall clock or by this process's CPU time.

    CPU time with one torch thread measures the work itself even when other jobs preempt the benchmark.
    """
    now = CLOCKS[clock]
    _sync(device)
    start = now()
    for _ in range(iters):
        fn()
    _sync(device)
    return (now() - start) / iters


@torch.no_grad()
def random_task(name: str, vit: nn.Module, config: af.AdapterConfig, fingerprint: str, seed: int) -> af.TaskAdapter:
    """A task with non-zero random branches in the configured blocks and a ``NUM_CLASSES`` head."""
    gen = torch.Generator().manual_seed(seed)
    adapters = {}
    for i in config.resolve_layers(len(vit.blocks)):
        adapter = af.AdaptMLP(vit.embed_dim, config)
        for p in (adapter.up.weight, adapter.up.bias, adapter.down.bias):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        adapters[i] = adapter
    head = nn.Linear(vit.num_features, NUM_CLASSES)
    info = af.TaskInfo(task=name, labels=[str(i) for i in range(NUM_CLASSES)], backbone=MODEL, fingerprint=fingerprint)
    return af.TaskAdapter(info, head, config, adapters)


def adapter_flops_share(vit: nn.Module, bottleneck: int) -> float:
    """Multiply-adds of the branches as a fraction of the backbone's blocks (per token, attention included)."""
    dim, tokens = vit.embed_dim, vit.patch_embed.num_patches + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    block = 4 * dim * dim + 2 * dim * hidden + 2 * tokens * dim  # qkv + proj, MLP, q@k and attn@v
    return 2 * dim * bottleneck / block


def measure(
    row: Row, vit: nn.Module, engine: af.MultiTaskViT, x: torch.Tensor, s: Settings, device: torch.device
) -> dict:
    """Interleaved baseline/engine timings of one row; returns the row's results."""
    if row.kind == "model":
        model = af.add_adapters(copy.deepcopy(vit), af.AdapterConfig(bottleneck=row.bottleneck), NUM_CLASSES)
        with torch.no_grad():
            for blk in model.blocks:
                blk.adapter.up.weight.normal_(0, 0.02)
        model.eval()

        def run() -> object:
            return model(x)

    else:
        names = [f"d{row.bottleneck}-{k}" for k in range(row.tasks)]
        for k, name in enumerate(names):
            if name not in engine:
                config = af.AdapterConfig(bottleneck=row.bottleneck)
                engine.add_task(name, random_task(name, engine.vit, config, engine.fingerprint, seed=k))
        tasks = names[0] if row.tasks == 1 else [names[i % row.tasks] for i in range(x.shape[0])]

        def run() -> object:
            return engine(x, tasks)

    def baseline() -> object:
        return vit.forward_features(x)

    with torch.inference_mode():
        for _ in range(s.warmup):
            baseline()
            run()
        base_t, eng_t = [], []
        for _ in range(s.reps):
            base_t.append(timed(baseline, s.iters, device, s.clock))
            eng_t.append(timed(run, s.iters, device, s.clock))
    b, e = statistics.median(base_t), statistics.median(eng_t)
    return {
        "key": row.key,
        "label": row.label,
        "kind": row.kind,
        "tasks_per_batch": row.tasks,
        "bottleneck": row.bottleneck,
        "adapter_flops_percent": round(100 * adapter_flops_share(vit, row.bottleneck), 2),
        "baseline_images_per_s": round(x.shape[0] / b, 2),
        "engine_images_per_s": round(x.shape[0] / e, 2),
        "ratio": round(statistics.median(bt / et for bt, et in zip(base_t, eng_t, strict=True)), 4),
        "ratio_of_medians": round(b / e, 4),
        "baseline_s": [round(t, 5) for t in base_t],
        "engine_s": [round(t, 5) for t in eng_t],
    }


def machine_info(device: torch.device) -> dict:
    """Platform, versions, threads and the load average when the run starts (other jobs skew timings)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "adaptformer": af.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        "# Engine throughput",
        "",
        f"MultiTaskViT against plain timm `forward_features` on {MODEL} (random weights), {s['image_size']} px, "
        f"batch {s['batch']}, fp32, `torch.inference_mode`. Each row alternates baseline and engine runs "
        f"({s['reps']} repetitions of {s['iters']} batch(es) after {s['warmup']} warm-up), timed by "
        + ("the wall clock" if s["clock"] == "wall" else "this process's CPU time (`time.process_time`)")
        + "; images/s are medians, the "
        "ratio is the median of the paired ratios (engine speed / baseline speed). Tasks in a mixed batch are "
        "interleaved row by row; every task has branches of the given d^ in all 12 blocks and a "
        f"{NUM_CLASSES}-class head. Target: ratio >= {TARGET_RATIO} at 16 tasks, d^=64.",
        "",
        f"- Command: `{result['command']}`",
        f"- Date: {result['date']}",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}; device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f"; torch {m['torch']} ({m['torch_threads']} threads), timm {m['timm']}, Python {m['python']}",
        f"- Load average at start: {', '.join(str(v) for v in m['load_average_at_start'])}",
    ]
    if result.get("note"):
        lines.append(f"- Note: {result['note']}")
    lines += [
        "",
        "| row | tasks / batch | d^ | branch FLOPs (% of blocks) | baseline img/s | engine img/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r['tasks_per_batch']} | {r['bottleneck']} | {r['adapter_flops_percent']:.2f} | "
            f"{r['baseline_images_per_s']:.1f} | {r['engine_images_per_s']:.1f} | {r['ratio']:.3f} |"
        )
    target = next((r for r in result["rows"] if r["key"] == TARGET_ROW), None)
    if target is not None:
        verdict = "met" if target["ratio"] >= TARGET_RATIO else "missed"
        lines += ["", f"Target (16 tasks, d^=64, ratio >= {TARGET_RATIO}): **{verdict}** ({target['ratio']:.3f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, one repetition: a smoke test, not a result")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for the JSON and Markdown")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32, quick: 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per row (default: 7, quick: 1)")
    parser.add_argument("--iters", type=int, default=None, help="batches per timing (default: 1 on CPU, 20 on CUDA)")
    parser.add_argument(
        "--rows", nargs="*", default=None, help=f"row keys to run (default all: {[r.key for r in ROWS]})"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per row (default: 2, quick: 1)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall clock, or this process's CPU time (use with --threads 1 on a machine shared with other jobs)",
    )
    parser.add_argument("--note", default="", help="free text added to the Markdown (e.g. other load on the machine)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time; use the wall clock on CUDA")
    s = Settings(
        batch=args.batch or (8 if args.quick else 32),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        reps=args.reps or (1 if args.quick else 7),
        iters=args.iters or ((3 if args.quick else 20) if cuda else 1),
        clock=args.clock,
    )
    torch.manual_seed(0)
    vit = timm.create_model(MODEL, pretrained=False, num_classes=0).to(device).eval()
    vit.requires_grad_(False)
    engine = af.MultiTaskViT(vit)  # shares the backbone: baseline and engine run the very same weights
    size = vit.patch_embed.img_size[0]
    x = torch.randn(s.batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info(device) | {"cpu_model": cpu_model()}
    rows = [r for r in ROWS if args.rows is None or r.key in args.rows]
    results = []
    for row in rows:
        r = measure(row, vit, engine, x, s, device)
        print(
            f"{row.key:>16}: baseline {r['baseline_images_per_s']:8.1f} img/s  engine {r['engine_images_per_s']:8.1f}"
            f" img/s  ratio {r['ratio']:.3f}",
            flush=True,
        )
        results.append(r)

    result = {
        "benchmark": "engine_throughput",
        "model": MODEL,
        "command": " ".join(
            ["python -m benchmarks.engine_throughput", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "date": started,
        "settings": asdict(s) | {"image_size": size, "quick": args.quick},
        "machine": machine,
        "note": args.note,
        "target": {"row": TARGET_ROW, "ratio": TARGET_RATIO},
        "rows": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "engine_throughput.md").write_text(to_markdown(result))
    print(f"wrote {args.out / 'engine_throughput.json'} and {args.out / 'engine_throughput.md'}")
    return result


if __name__ == "__main__":
    main()
