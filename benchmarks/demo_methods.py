"""Accuracy of each method on the demo tasks with the embedded backbone: linear, VPT, AdaptFormer, full.

    python -m benchmarks.demo_methods            # the committed table (about 25 min on 2 CPU cores)
    python -m benchmarks.demo_methods --quick    # pipeline smoke run (about a minute)

Writes docs/benchmarks/demo_methods.{json,md}. The same recipe for every method (AdamW, lr 5e-3 with one
warmup epoch and cosine decay, weight decay 1e-4, batch 64), as in the paper's comparisons.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from adaptformer.backbone import load_backbone
from adaptformer.config import AdapterConfig
from adaptformer.data import load_data
from adaptformer.train import TrainConfig, build_model, fit

TASKS = {"digits": {"epochs": 15}, "emoji": {"epochs": 15}, "motion": {"epochs": 10, "frames": 8}}
METHODS = {
    "linear": {},
    "vpt": {"prompt_tokens": 4, "vpt_deep": True},
    "adaptformer": {"adapter": AdapterConfig(bottleneck=64, scale=0.1)},
    "full": {},
}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 samples, 1 epoch: checks the pipeline, not the claims")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = p.parse_args(argv)
    started = time.time()
    rows = []
    for task in args.tasks:
        spec = TASKS[task]
        splits = load_data(task, load_backbone().spec, frames=spec.get("frames"), limit=200 if args.quick else None,
                           progress=False)  # fmt: skip
        for method, knobs in METHODS.items():
            cfg = TrainConfig(method=method, epochs=1 if args.quick else spec["epochs"], device="cpu", **knobs)
            backbone = load_backbone()
            model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
            result = fit(model, splits, cfg, progress=False)
            row = {"task": task, "method": method, **result.metrics, "seconds": round(result.seconds, 1)}
            rows.append(row)
            print(f"{task:8s} {method:12s} val top-1 {row['val_top1']:.4f}  trainable {row['trainable_params']:>9,} "
                  f"({row['percent_of_backbone']:.2f}%)  {row['seconds']:.0f} s", flush=True)  # fmt: skip
    meta = {
        "command": "python -m benchmarks.demo_methods" + (" --quick" if args.quick else ""),
        "commit": _commit(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": round(time.time() - started),
        "recipe": "AdamW, lr 5e-3, 1 warmup epoch then cosine, weight decay 1e-4, batch 64, seed 0; "
        "VPT deep with 4 tokens; AdaptFormer d^=64, s=0.1, all blocks, LN(x') input",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "demo_methods_quick" if args.quick else "demo_methods"
    previous = args.out / f"{name}.json"
    if set(args.tasks) != set(TASKS) and previous.exists():
        # A rerun of some tasks keeps the other tasks' rows (and says so).
        kept = [r for r in json.loads(previous.read_text())["rows"] if r["task"] not in args.tasks]
        rows = sorted(kept + rows, key=lambda r: (list(TASKS).index(r["task"]), list(METHODS).index(r["method"])))
        meta["command"] += " --tasks " + " ".join(args.tasks) + " (other tasks' rows from the previous run)"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Demo tasks: accuracy per method (embedded backbone)",
        "",
        f"Command: `{meta['command']}` at commit {meta['commit']}, {meta['date']}, {meta['machine']}, "
        f"wall time {meta['wall_seconds'] / 60:.0f} min.",
        "",
        "Train times are wall-clock seconds and depend on what else the machine runs: compare accuracies.",
        "",
        f"Recipe (the same for every method): {meta['recipe']}.",
        "",
        "| task | method | val top-1 | trainable params | % of backbone | train time (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['task']} | {r['method']} | {r['val_top1']:.4f} | {r['trainable_params']:,} | "
        f"{r['percent_of_backbone']:.2f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
