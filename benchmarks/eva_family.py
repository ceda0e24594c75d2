"""Eva-family engine throughput: MultiTaskViT on an EVA-02 Small-size random model against the plain timm model.

    python -m benchmarks.eva_family [--model eva02_small_patch14_224] [--batch 16] [--reps 5] [--threads 1]
        [--clock cpu|wall] [--out docs/benchmarks/eva_family.md]

Random weights (timm's init, ``pretrained=False``; nothing is downloaded): speed does not depend on their values.
Each repetition runs the plain model (``forward_features`` + ``forward_head(pre_logits=True)``, the same pooled
features) and then every engine row on the same batch, so slow drifts of the machine hit all alike; the ratio of a
row is the median over repetitions of baseline time / row time of that repetition (1.0: the engine costs nothing
over the plain backbone). Every task has d^ branches in all blocks (non-zero random weights) and a 10-class head;
tasks in a mixed batch are interleaved row by row. Writes the Markdown report and its JSON beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch

import adaptformer as af
from benchmarks.engine_throughput import NUM_CLASSES, random_task
from benchmarks.machine import header, report_head, write_report

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], object], clock: str) -> float:
    now = CLOCKS[clock]
    start = now()
    fn()
    return now() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="eva02_small_patch14_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tasks", type=int, default=16, help="tasks of the mixed rows")
    parser.add_argument("--bottleneck", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--paths", nargs="+", default=["slices", "gathered"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = header("benchmarks.eva_family", argv, note="random weights, CPU")

    torch.manual_seed(0)
    vit = timm.create_model(args.model, pretrained=False, num_classes=0).eval()
    vit.requires_grad_(False)
    size = vit.patch_embed.img_size[0]
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    fingerprint = af.backbone_fingerprint(vit)
    config, arch = af.AdapterConfig(bottleneck=args.bottleneck), vit.pretrained_cfg["architecture"]
    tasks = {f"t{k}": random_task(f"t{k}", vit, config, fingerprint, k, backbone=arch) for k in range(args.tasks)}

    engines = {}
    for path in args.paths:
        engine = af.MultiTaskViT(vit, fingerprint=fingerprint, path=path)  # shares the frozen weights
        for name, task in tasks.items():
            engine.add_task(name, task)
        engines[path] = engine

    def plain() -> object:
        with torch.inference_mode():
            return vit.forward_head(vit.forward_features(x), pre_logits=True)

    one = ["t0"] * args.batch
    mixed = [f"t{i % args.tasks}" for i in range(args.batch)]
    rows: dict[str, tuple[str, Callable[[], object]]] = {}
    for path, engine in engines.items():
        rows[f"{path}-1"] = (f"engine, {path} path, 1 task", lambda e=engine: e(x, one))
        rows[f"{path}-{args.tasks}"] = (
            f"engine, {path} path, {args.tasks} tasks mixed",
            lambda e=engine: e(x, mixed),
        )

    for _ in range(args.warmup):
        plain()
        for _, fn in rows.values():
            fn()
    base: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in rows}
    for rep in range(args.reps):
        base.append(timed(plain, args.clock))
        for key, (_, fn) in rows.items():
            times[key].append(timed(fn, args.clock))
        print(f"rep {rep + 1}/{args.reps}: plain {args.batch / base[-1]:.2f} img/s", flush=True)

    result.update(
        model=args.model,
        params=sum(p.numel() for p in vit.parameters()),
        image_size=size,
        tokens=vit.patch_embed.num_patches + vit.num_prefix_tokens,
        batch=args.batch,
        bottleneck=args.bottleneck,
        threads=args.threads,
        clock=args.clock,
        reps=args.reps,
        torch=torch.__version__,
        timm=timm.__version__,
        plain_img_s=round(args.batch / statistics.median(base), 3),
        rows=[
            {
                "key": key,
                "label": label,
                "img_s": round(args.batch / statistics.median(times[key]), 3),
                "ratio": round(statistics.median(b / t for b, t in zip(base, times[key], strict=True)), 3),
            }
            for key, (label, _) in rows.items()
        ],
        load_average_at_end=[round(v, 2) for v in os.getloadavg()],
    )
    write_report(args.out, to_markdown(result), result)
    return result


def to_markdown(r: dict) -> str:
    lines = [
        *report_head("Eva family: engine against the plain model", r),
        f"{r['model']} with random weights ({r['params']:,} parameters), {r['image_size']} px ({r['tokens']} tokens), "
        f"batch {r['batch']}, float32, CPU, {r['threads']} torch thread(s), timed by the {r['clock']} clock; "
        f"{r['reps']} repetitions, each running the plain model and then every row on the same batch. Every task "
        f"has d^={r['bottleneck']} branches in all blocks and a {NUM_CLASSES}-class head. img/s: medians; ratio: "
        "median over repetitions of plain time / row time (1.0: the engine costs nothing over the plain model). "
        f"torch {r['torch']}, timm {r['timm']}.",
        "",
        "| row | img/s | ratio to plain |",
        "| --- | ---: | ---: |",
        f"| plain timm model (forward_features + pooled head input) | {r['plain_img_s']:.2f} | 1.000 |",
    ]
    lines += [f"| {row['label']} | {row['img_s']:.2f} | {row['ratio']:.3f} |" for row in r["rows"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
