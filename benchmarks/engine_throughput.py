"""Engine throughput: MultiTaskViT mixed-task batches against plain timm ``forward_features`` on ViT-S/16, 224 px.

    python -m benchmarks.engine_throughput [--quick] [--device cpu|cuda] [--dtype float32|float16|bfloat16]
        [--count-ops] [--out docs/benchmarks]

Every row is measured interleaved with its own baseline (baseline, candidate, baseline, candidate, ...) on the same
batch and the same frozen weights, so slow drifts of the machine hit both alike. Times are medians over the
repetitions; the ratio is the median of the paired ratios baseline time / engine time (1.0: the engine costs
nothing over the plain backbone). Weights are random (timm's init, nothing is downloaded): speed does not depend
on their values. Writes ``engine_throughput.json`` and ``engine_throughput.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import importlib.metadata
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
from torch.utils._python_dispatch import TorchDispatchMode

import adaptformer as af
from benchmarks.machine import cpu_model

MODEL = "vit_small_patch16_224"
TARGET_ROWS = ("engine-16x64", "engine-64x64")
TARGET_RATIO = 0.96
NUM_CLASSES = 10
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Row:
    """One benchmark row.

    Attributes:
        key: Short id used in the JSON.
        label: What the row measures, for the table.
        kind: ``model`` (a single-task adapted timm model), ``engine`` (MultiTaskViT), ``peft`` (PEFT's mixed
            LoRA batch on the same timm ViT) or ``adapterhub`` (AdapterHub's BatchSplit on a transformers ViT of
            the same size, against that ViT without adapters).
        tasks: Distinct tasks resident; a batch holds ``min(tasks, batch)`` of them (calls alternate the rest).
        bottleneck: d^ of every task's branches (all blocks); LoRA rank r = d^/2 on qkv (the same parameters).
        path: Engine path (``auto``: the engine's choice).
    """

    key: str
    label: str
    kind: str
    tasks: int
    bottleneck: int
    path: str = "auto"


ROWS = [
    Row("single-model-64", "single task: add_adapters model", "model", 1, 64),
    Row("engine-1x64", "engine, 1 task", "engine", 1, 64),
    Row("engine-16x64", "engine, 16 tasks mixed", "engine", 16, 64),
    Row("engine-64x64", "engine, 64 tasks mixed", "engine", 64, 64),
    Row("gathered-1x64", "engine, gathered path forced, 1 task", "engine", 1, 64, "gathered"),
    # the forced paths at 2, 16 and 32 tasks (32: one row per task in a batch of 32), for the CPU rule of ``auto``
    *(
        Row(f"{path}-{n}x64", f"engine, {path} path forced, {n} tasks mixed", "engine", n, 64, path)
        for n in (2, 16, 32)
        for path in ("slices", "gathered", "grouped")
    ),
    Row("slices-64x64", "engine, slices path forced, 64 tasks mixed", "engine", 64, 64, "slices"),
    Row("grouped-64x64", "engine, grouped path forced, 64 tasks mixed", "engine", 64, 64, "grouped"),
    Row("peft-16", "PEFT mixed LoRA batch (r=32 on qkv), 16 adapters", "peft", 16, 64),
    Row("adapterhub-16", "AdapterHub BatchSplit (ParBn, d^=64), 16 adapters", "adapterhub", 16, 64),
]
DEFAULT_ROWS = [
    "engine-1x64",
    "engine-16x64",
    "engine-64x64",
    "slices-16x64",
    "peft-16",
    "adapterhub-16",
]


@dataclass(frozen=True)
class Settings:
    batch: int
    warmup: int
    reps: int
    iters: int
    clock: str  # "wall" (perf_counter) or "cpu" (process_time: this process's CPU seconds)
    dtype: str = "float32"


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], iters: int, device: torch.device, clock: str = "wall") -> float:
    """Seconds per call of ``fn`` over ``iters`` calls, by the wall clock or by this process's CPU time.

    CPU time with one torch thread measures the work itself even when other jobs preempt the benchmark.
    """
    now = CLOCKS[clock]
    sync_device(device)
    start = now()
    for _ in range(iters):
        fn()
    sync_device(device)
    return (now() - start) / iters


def paired_times(
    first: Callable[[], object],
    second: Callable[[], object],
    *,
    warmup: int,
    reps: int,
    iters: int,
    device: torch.device,
    clock: str = "wall",
) -> tuple[list[float], list[float]]:
    """Both warmed up, then timed in turn ``reps`` times (seconds per call, :func:`timed`): paired samples, whose
    per-pair ratios the reports take the median of."""
    with torch.inference_mode():
        for _ in range(warmup):
            first()
            second()
        a, b = [], []
        for _ in range(reps):
            a.append(timed(first, iters, device, clock))
            b.append(timed(second, iters, device, clock))
    return a, b


@torch.no_grad()
def random_task(
    name: str, vit: nn.Module, config: af.AdapterConfig, fingerprint: str, seed: int, backbone: str = MODEL
) -> af.TaskAdapter:
    """A task of ``backbone`` with non-zero random branches in the configured blocks and a ``NUM_CLASSES`` head."""
    gen = torch.Generator().manual_seed(seed)
    adapters = {}
    for i in config.resolve_layers(len(vit.blocks)):
        adapter = af.AdaptMLP(vit.embed_dim, config)
        for p in (adapter.up.weight, adapter.up.bias, adapter.down.bias):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        adapters[i] = adapter
    head = nn.Linear(vit.num_features, NUM_CLASSES)
    labels = [str(i) for i in range(NUM_CLASSES)]
    # the backbone's own input size: the engine refuses a task whose input spec (default 224) does not fit it
    info = af.TaskInfo(
        task=name, labels=labels, backbone=backbone, fingerprint=fingerprint, input=af.spec_from_model(vit)
    )
    return af.TaskAdapter(info, head, config, adapters)


def adapter_flops_share(vit: nn.Module, bottleneck: int) -> float:
    """Multiply-adds of the branches as a fraction of the backbone's blocks (per token, attention included)."""
    dim, tokens = vit.embed_dim, vit.patch_embed.num_patches + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    block = 4 * dim * dim + 2 * dim * hidden + 2 * tokens * dim  # qkv + proj, MLP, q@k and attn@v
    return 2 * dim * bottleneck / block


def batches_of(names: list[str], batch: int) -> list[list[str]]:
    """Task lists for successive calls: rows cycle through ``names``, so every task is served once per cycle."""
    calls = max(1, -(-len(names) // batch))
    return [[names[(c * batch + i) % len(names)] for i in range(batch)] for c in range(calls)]


def ran_path(row: Row, engine: af.MultiTaskViT, x: torch.Tensor) -> str:
    """The path the engine takes for the row's first batch."""
    names = [f"d{row.bottleneck}-{k}" for k in range(row.tasks)]
    plan = af.engine._plan(batches_of(names, x.shape[0])[0], engine.tasks)
    engine.path = row.path
    try:
        return engine.choose_path(plan, x.device, x.dtype)
    finally:
        engine.path = "auto"


def engine_fns(row: Row, engine: af.MultiTaskViT, x: torch.Tensor) -> Callable[[], object]:
    names = [f"d{row.bottleneck}-{k}" for k in range(row.tasks)]
    config = af.AdapterConfig(bottleneck=row.bottleneck)
    for k, name in enumerate(names):
        if name not in engine:
            engine.add_task(name, random_task(name, engine.vit, config, engine.fingerprint, seed=k))
    calls = batches_of(names, x.shape[0])
    state = {"call": 0}

    def run() -> object:
        tasks = calls[state["call"] % len(calls)]
        state["call"] += 1
        engine.path = row.path
        try:
            return engine(x, tasks)
        finally:
            engine.path = "auto"

    return run


def peft_fns(row: Row, vit: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """PEFT's mixed-adapter batch: LoRA (r = d^/2 on qkv: the parameters of a d^ branch) per task, on the timm ViT."""
    from peft import LoraConfig, get_peft_model

    def config() -> LoraConfig:
        return LoraConfig(r=row.bottleneck // 2, target_modules=["qkv"], init_lora_weights=False)

    model = get_peft_model(copy.deepcopy(vit), config(), adapter_name="t0")
    for k in range(1, row.tasks):
        model.add_adapter(f"t{k}", config())
    model.eval()
    calls = batches_of([f"t{k}" for k in range(row.tasks)], x.shape[0])
    state = {"call": 0}

    def run() -> object:
        names = calls[state["call"] % len(calls)]
        state["call"] += 1
        return model(x, adapter_names=names)

    return run


def adapterhub_fns(row: Row, vit: nn.Module, x: torch.Tensor) -> tuple[Callable[[], object], Callable[[], object]]:
    """AdapterHub's BatchSplit of parallel bottleneck adapters on a transformers ViT of the timm ViT's size.

    Its baseline is that transformers ViT without adapters (the two libraries' ViTs differ slightly in speed).
    """
    from adapters.composition import BatchSplit
    from transformers import ViTConfig, ViTModel

    import adapters
    from adapters import ParBnConfig

    hidden = vit.blocks[0].mlp.fc1.out_features
    cfg = ViTConfig(
        hidden_size=vit.embed_dim,
        num_hidden_layers=len(vit.blocks),
        num_attention_heads=vit.blocks[0].attn.num_heads,
        intermediate_size=hidden,
        image_size=vit.patch_embed.img_size[0],
        patch_size=vit.patch_embed.patch_size[0],
    )
    torch.manual_seed(0)
    plain = ViTModel(cfg, add_pooling_layer=False).to(x.device, x.dtype).eval()
    model = copy.deepcopy(plain)
    adapters.init(model)
    names = [f"t{k}" for k in range(row.tasks)]
    for name in names:
        model.add_adapter(name, config=ParBnConfig(reduction_factor=vit.embed_dim // row.bottleneck))
    model.to(x.device, x.dtype).eval()
    per = x.shape[0] // row.tasks
    sizes = [per + (1 if k < x.shape[0] % row.tasks else 0) for k in range(row.tasks)]
    model.active_adapters = BatchSplit(*names, batch_sizes=sizes)

    def baseline() -> object:
        return plain(pixel_values=x).last_hidden_state

    def run() -> object:
        return model(pixel_values=x).last_hidden_state

    return baseline, run


def measure(
    row: Row, vit: nn.Module, engine: af.MultiTaskViT, x: torch.Tensor, s: Settings, device: torch.device
) -> dict:
    """Interleaved baseline/candidate timings of one row; returns the row's results."""

    def baseline() -> object:
        return vit.forward_features(x)

    if row.kind == "model":
        model = af.add_adapters(copy.deepcopy(vit), af.AdapterConfig(bottleneck=row.bottleneck), NUM_CLASSES)
        with torch.no_grad():
            for blk in model.blocks:
                blk.adapter.up.weight.normal_(0, 0.02)
        model.eval()

        def run() -> object:
            return model(x)

    elif row.kind == "engine":
        run = engine_fns(row, engine, x)
    elif row.kind == "peft":
        run = peft_fns(row, vit, x)
    else:
        baseline, run = adapterhub_fns(row, vit, x)

    base_t, eng_t = paired_times(
        baseline, run, warmup=s.warmup, reps=s.reps, iters=s.iters, device=device, clock=s.clock
    )
    b, e = statistics.median(base_t), statistics.median(eng_t)
    return {
        "key": row.key,
        "label": row.label,
        "kind": row.kind,
        "path": row.path,
        "ran": ran_path(row, engine, x) if row.kind == "engine" else None,
        "tasks": row.tasks,
        "tasks_per_batch": min(row.tasks, x.shape[0]),
        "bottleneck": row.bottleneck,
        "adapter_flops_percent": round(100 * adapter_flops_share(vit, row.bottleneck), 2),
        "baseline_images_per_s": round(x.shape[0] / b, 2),
        "engine_images_per_s": round(x.shape[0] / e, 2),
        "ratio": round(statistics.median(bt / et for bt, et in zip(base_t, eng_t, strict=True)), 4),
        "ratio_of_medians": round(b / e, 4),
        "baseline_s": [round(t, 5) for t in base_t],
        "engine_s": [round(t, 5) for t in eng_t],
    }


class _CountOps(TorchDispatchMode):
    """Counts the ATen operators a call dispatches that launch work (views and aliases launch none)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view and func.overloadpacket not in (torch.ops.aten.detach_, torch.ops.aten.lift_fresh):
            self.count += 1
        return func(*args, **(kwargs or {}))


def operator_counts(engine: af.MultiTaskViT, x: torch.Tensor, paths: list[str], tasks: list[int]) -> list[dict]:
    """Operators dispatched by one forward of ``max(tasks)`` rows per path and number of tasks (after a first call
    has filled the bank)."""
    out = []
    config = af.AdapterConfig(bottleneck=64)
    x = x[:1].expand(max(tasks), *x.shape[1:])  # a row per task
    for count in tasks:
        names = [f"d64-{k}" for k in range(count)]
        for k, name in enumerate(names):
            if name not in engine:
                engine.add_task(name, random_task(name, engine.vit, config, engine.fingerprint, seed=k))
        rows = [names[i % count] for i in range(x.shape[0])]
        for path in paths:
            engine.path = path
            with torch.inference_mode():
                engine(x, rows)
                with _CountOps() as counter:
                    engine(x, rows)
            out.append({"path": path, "tasks": count, "operators": counter.count})
    engine.path = "auto"
    return out


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


def _versions() -> dict:
    out = {}
    for name in ("peft", "adapters", "transformers"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def to_markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in result.get("libraries", {}).items())
    lines = [
        "# Engine throughput",
        "",
        f"MultiTaskViT against plain timm `forward_features` on {MODEL} (random weights), {s['image_size']} px, "
        f"batch {s['batch']}, {s['dtype']}, `torch.inference_mode`. Each row alternates baseline and candidate "
        f"runs ({s['reps']} repetitions of {s['iters']} batch(es) after {s['warmup']} warm-up), timed by "
        + ("the wall clock" if s["clock"] == "wall" else "this process's CPU time (`time.process_time`)")
        + "; images/s are medians, the ratio is the median of the paired ratios (candidate speed / baseline "
        "speed). Tasks in a mixed batch are interleaved row by row; every task has branches of the given d^ in all "
        f"12 blocks and a {NUM_CLASSES}-class head. With more tasks than rows in a batch, successive batches take "
        "the next rows of the task cycle, so every task is served and stays in the branch bank. PEFT: LoRA of "
        "rank d^/2 on `qkv` (the parameters of a d^ branch), `adapter_names` per row, on the same timm ViT. "
        "AdapterHub: parallel bottleneck adapters (ParBn, d^) under `BatchSplit` on a transformers `ViTModel` "
        "of the same size, against that model without adapters. Engine paths: docs/ARCHITECTURE.md. "
        f"Target: ratio >= {TARGET_RATIO} for {' and '.join(TARGET_ROWS)}.",
        "",
        f"- Command: `{result['command']}`",
        f"- Date: {result['date']}",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['platform']}; device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f"; torch {m['torch']} ({m['torch_threads']} threads), timm {m['timm']}, Python {m['python']}"
        + (f"; {versions}" if versions else ""),
        f"- Load average at start: {', '.join(str(v) for v in m['load_average_at_start'])}; at the end: "
        f"{', '.join(str(v) for v in result.get('load_average_at_end', []))} (the machine is shared: other jobs "
        "slow baseline and candidate alike, but add noise)",
    ]
    if result.get("note"):
        lines.append(f"- Note: {result['note']}")
    lines += [
        "",
        "| row | path run | tasks | tasks / batch | d^ | branch FLOPs (% of blocks) | baseline img/s | candidate img/s "
        "| ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r.get('ran') or '-'} | {r['tasks']} | {r['tasks_per_batch']} | {r['bottleneck']} | "
            f"{r['adapter_flops_percent']:.2f} | {r['baseline_images_per_s']:.1f} | {r['engine_images_per_s']:.1f} | "
            f"{r['ratio']:.3f} |"
        )
    for key in TARGET_ROWS:
        target = next((r for r in result["rows"] if r["key"] == key), None)
        if target is not None:
            verdict = "met" if target["ratio"] >= TARGET_RATIO else "missed"
            lines += ["", f"Target {key} (ratio >= {TARGET_RATIO}): **{verdict}** ({target['ratio']:.3f})."]
    if result.get("operators"):
        lines += [
            "",
            "Operators dispatched by one forward of 64 rows (ATen calls that launch work; views excluded), after a "
            "first call has filled the branch bank:",
            "",
            "| path | tasks | operators |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {o['path']} | {o['tasks']} | {o['operators']} |" for o in result["operators"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8, one repetition: a smoke test, not a result")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="backbone and branch dtype")
    parser.add_argument("--model", default=MODEL, help=f"timm ViT name (default {MODEL})")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for the JSON and Markdown")
    parser.add_argument("--name", default="engine_throughput", help="file name (without extension) of the results")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32, quick: 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per row (default: 15, quick: 1)")
    parser.add_argument("--iters", type=int, default=None, help="batches per timing (default: 1 on CPU, 20 on CUDA)")
    parser.add_argument(
        "--rows",
        nargs="*",
        default=None,
        help=f"row keys to run (default {DEFAULT_ROWS}; all: {[r.key for r in ROWS]})",
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per row (default: 2, quick: 1)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall clock, or this process's CPU time (use with --threads 1 on a machine shared with other jobs)",
    )
    parser.add_argument("--count-ops", action="store_true", help="also count the operators of one forward per path")
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
        reps=args.reps or (1 if args.quick else 15),
        iters=args.iters or ((3 if args.quick else 20) if cuda else 1),
        clock=args.clock,
        dtype=args.dtype,
    )
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    vit = timm.create_model(args.model, pretrained=False, num_classes=0).to(device, dtype).eval()
    vit.requires_grad_(False)
    engine = af.MultiTaskViT(vit)  # shares the backbone: baseline and engine run the very same weights
    size = vit.patch_embed.img_size[0]
    x = torch.randn(s.batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info(device) | {"cpu_model": cpu_model()}
    wanted = DEFAULT_ROWS if args.rows is None else args.rows
    rows = [r for r in ROWS if r.key in wanted]
    results = []
    for row in rows:
        r = measure(row, vit, engine, x, s, device)
        print(
            f"{row.key:>16}: baseline {r['baseline_images_per_s']:8.1f} img/s  candidate "
            f"{r['engine_images_per_s']:8.1f} img/s  ratio {r['ratio']:.3f}",
            flush=True,
        )
        results.append(r)
    paths = [p for p in af.engine.PATHS if p != "auto"]
    operators = operator_counts(engine, x, paths, [1, 16, 64]) if args.count_ops else []
    for o in operators:
        print(f"operators: {o['path']:>8}, {o['tasks']:2d} tasks: {o['operators']}", flush=True)

    result = {
        "benchmark": "engine_throughput",
        "model": args.model,
        "command": " ".join(
            ["python -m benchmarks.engine_throughput", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "date": started,
        "settings": asdict(s) | {"image_size": size, "quick": args.quick},
        "machine": machine,
        "libraries": _versions(),
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": args.note,
        "target": {"rows": list(TARGET_ROWS), "ratio": TARGET_RATIO},
        "rows": results,
        "operators": operators,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(to_markdown(result))
    print(f"wrote {args.out / (args.name + '.json')} and {args.out / (args.name + '.md')}")
    return result


if __name__ == "__main__":
    main()
