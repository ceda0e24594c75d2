"""Accuracy of each method on the demo tasks with the embedded backbone: linear, VPT, AdaptFormer, full.

    python -m benchmarks.demo_methods                          # every task and method (over an hour on 2 CPU cores)
    python -m benchmarks.demo_methods --tasks motion --methods linear adaptformer   # rerun some rows, keep the others
    python -m benchmarks.demo_methods --variants               # the clip tasks' temporal parts, one row per variant
    python -m benchmarks.demo_methods --quick                  # pipeline smoke run (about a minute)

Writes docs/benchmarks/demo_methods.{json,md}. The same recipe for every method (AdamW, lr 5e-3 with one
warmup epoch and cosine decay, weight decay 1e-4, batch 64), as in the paper's comparisons. Clip tasks get the
default temporal part (``TrainConfig(temporal="auto")``: :data:`adaptformer.train.DEFAULT_TEMPORAL`, none for the
linear probe); ``--variants`` compares the temporal parts and tubelet sizes with AdaptFormer branches on the clip
tasks.
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
from adaptformer.train import DEFAULT_TEMPORAL, TrainConfig, build_model, fit

TASKS = {
    "digits": {"epochs": 15},
    "emoji": {"epochs": 15},
    "motion": {"epochs": 6, "frames": 8},
    "zoom-rotate": {"epochs": 6, "frames": 8},
}
METHODS = {
    "linear": {},
    "vpt": {"prompt_tokens": 4, "vpt_deep": True},
    "adaptformer": {"adapter": AdapterConfig(bottleneck=64, scale=0.1)},
    "full": {},
}
# Temporal parts x tubelet, compared on the clip tasks with AdaptFormer branches and a short schedule.
VARIANTS = [("diff", 2), ("diff+time", 2), ("time+mix", 2), ("none", 2), ("diff", 4), ("diff+time+mix", 1)]
VARIANT_EPOCHS = 3
VARIANT_TRAIN = 600  # training clips per variant: a shared 2-core machine trains about 6 clips of 8 frames a second
RECIPE = (
    "AdamW, lr 5e-3, 1 warmup epoch then cosine, weight decay 1e-4, batch 64, seed 0; VPT deep with 4 tokens; "
    f"AdaptFormer d^=64, s=0.1, all blocks, LN(x') input; clip tasks: tubelet 2, temporal part {DEFAULT_TEMPORAL!r} "
    "(none for linear)"
)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _run(task: str, splits, cfg: TrainConfig) -> dict:
    model = build_model(load_backbone(), cfg, len(splits.labels), frames=splits.frames)
    temporal = sum(p.numel() for n, p in model.named_parameters() if ".temporal." in f".{n}")
    result = fit(model, splits, cfg, progress=False)
    return {"task": task, **result.metrics, "temporal_params": temporal, "seconds": round(result.seconds, 1)}


def _methods(args, splits_of) -> list[dict]:
    rows = []
    for task in args.tasks:
        spec = TASKS[task]
        splits = splits_of(task)
        for method in args.methods:
            epochs = 1 if args.quick else spec["epochs"]
            cfg = TrainConfig(method=method, epochs=epochs, device="cpu", **METHODS[method])
            row = {"method": method, **_run(task, splits, cfg)}
            row = {"task": row.pop("task"), **row}
            rows.append(row)
            print(f"{task:12s} {method:12s} val top-1 {row['val_top1']:.4f}  trainable {row['trainable_params']:>9,} "
                  f"({row['percent_of_backbone']:.2f}%)  {row['seconds']:.0f} s", flush=True)  # fmt: skip
    return rows


def _variants(args, splits_of) -> list[dict]:
    rows = []
    for task in args.tasks:
        if "frames" not in TASKS[task]:
            continue
        splits = splits_of(task, VARIANT_TRAIN)
        for temporal, tubelet in args.variant_list:
            cfg = TrainConfig(epochs=1 if args.quick else VARIANT_EPOCHS, device="cpu", tubelet=tubelet,
                              temporal=temporal, eval_every=VARIANT_EPOCHS, **METHODS["adaptformer"])  # fmt: skip
            row = {"temporal": temporal, "tubelet": tubelet, **_run(task, splits, cfg)}
            row = {"task": row.pop("task"), **row}
            rows.append(row)
            print(f"{task:12s} {temporal:14s} tubelet {tubelet}  val top-1 {row['val_top1']:.4f}  temporal "
                  f"{row['temporal_params']:,}  {row['seconds']:.0f} s", flush=True)  # fmt: skip
    return rows


def _merge(old: list[dict], new: list[dict], key) -> list[dict]:
    """The new rows, and the old rows whose key no new row has (a partial rerun keeps the rest)."""
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 samples, 1 epoch: checks the pipeline, not the claims")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    p.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--variants", action="store_true", help="compare temporal parts on the clip tasks instead")
    p.add_argument("--only", nargs="*", metavar="PARTS@TUBELET", help="with --variants: these variants (diff@2 ...)")
    args = p.parse_args(argv)
    args.variant_list = [(v.split("@")[0], int(v.split("@")[1])) for v in args.only] if args.only else VARIANTS
    started = time.time()
    backbone_spec = load_backbone().spec

    def splits_of(task: str, limit: int | None = None):
        limit = 200 if args.quick else limit
        return load_data(task, backbone_spec, frames=TASKS[task].get("frames"), limit=limit, progress=False)

    name = "demo_methods_quick" if args.quick else "demo_methods"
    path = args.out / f"{name}.json"
    report = json.loads(path.read_text()) if path.exists() else {"meta": {}, "rows": [], "variants": []}
    report.setdefault("variants", [])
    if "runs" not in report["meta"] and "command" in report["meta"]:  # a report written before the runs list
        keys = ("command", "commit", "machine", "date", "wall_seconds")
        report["meta"]["runs"] = [{k: report["meta"].pop(k) for k in keys if k in report["meta"]}]
    command = "python -m benchmarks.demo_methods" + " ".join(
        [""] + (["--quick"] if args.quick else []) + (["--variants"] if args.variants else [])
        + (["--tasks", *args.tasks] if args.tasks != list(TASKS) else [])
        + (["--methods", *args.methods] if args.methods != list(METHODS) and not args.variants else [])
        + (["--only", *args.only] if args.variants and args.only else [])
    )  # fmt: skip
    run = {"command": command, "commit": _commit(), "machine": _machine(), "date": time.strftime("%Y-%m-%d")}
    if args.variants:
        rows = _variants(args, splits_of)
        report["variants"] = _merge(report["variants"], rows, lambda r: (r["task"], r["temporal"], r["tubelet"]))
        run["wall_seconds"] = round(time.time() - started)
        report["meta"]["variants_runs"] = [*report["meta"].get("variants_runs", []), run]
    else:
        rows = _methods(args, splits_of)
        report["rows"] = _merge(report["rows"], rows, lambda r: (r["task"], r["method"]))
        run["wall_seconds"] = round(time.time() - started)
        report["meta"]["runs"] = [*report["meta"].get("runs", []), run]
        report["meta"]["recipe"] = RECIPE
    order = {t: i for i, t in enumerate(TASKS)}
    report["rows"].sort(key=lambda r: (order.get(r["task"], 99), list(METHODS).index(r["method"])))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render(report))


def render(report: dict) -> str:
    """The markdown page of a report (every run that made its rows is listed)."""
    meta = report["meta"]
    lines = ["# Demo tasks: accuracy per method (embedded backbone)", ""]
    lines += ["Runs that made the rows below (later runs replace the rows they reran):", ""]
    lines += [
        f"- `{r['command']}` at commit {r['commit']}, {r['date']}, {r['machine']}, wall time "
        f"{r['wall_seconds'] / 60:.0f} min"
        for r in meta.get("runs", [])
    ]
    lines += [f"\n{note}" for note in meta.get("notes", [])]
    lines += [
        "",
        "Train times are wall-clock seconds on a machine shared with other jobs: compare accuracies, not times.",
        "",
        f"Recipe (the same for every method): {meta.get('recipe', RECIPE)}.",
        "",
        "| task | method | epochs | val top-1 | trainable params | % of backbone | train time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['task']} | {r['method']} | {r['epochs']} | {r['val_top1']:.4f} | {r['trainable_params']:,} | "
        f"{r['percent_of_backbone']:.2f} | {r['seconds']:.0f} |"
        for r in report["rows"]
    ]
    if report.get("variants"):
        lines += [
            "",
            "## Clip tasks: temporal parts",
            "",
            "The frozen tubelet embedding averages the frames of a tubelet, so a clip task brings a temporal part of "
            "its own (`adaptformer.temporal`): `diff`, a kernel over consecutive frame differences added to each "
            "tubelet's patch projection; `time`, a learned embedding per time slot; `mix`, a per-channel filter of "
            "the differences to the previous and next slot. `none`: the fixed time code only. AdaptFormer branches "
            f"(d^=64) and head in every row, {VARIANT_EPOCHS} epochs on {VARIANT_TRAIN} training clips (a shorter "
            "schedule than the table above), validated on the full validation split. "
            "Temporal % is the part's parameters as a share of the backbone; total % includes branches and head.",
            "",
        ]
        lines += [
            f"- `{r['command']}` at commit {r['commit']}, {r['date']}, {r['machine']}, wall time "
            f"{r['wall_seconds'] / 60:.0f} min"
            for r in meta.get("variants_runs", [])
        ]
        lines += [
            "",
            "| task | temporal | tubelet | epochs | val top-1 | temporal params | temporal % | total % | train time (s) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        backbone = {r["task"]: 100.0 * r["trainable_params"] / r["percent_of_backbone"] for r in report["variants"]}
        order = {t: i for i, t in enumerate(TASKS)}
        known = {v: i for i, v in enumerate(VARIANTS)}
        variants = sorted(
            report["variants"],
            key=lambda r: (order.get(r["task"], 99), known.get((r["temporal"], r["tubelet"]), 99)),
        )
        lines += [
            f"| {r['task']} | {r['temporal']} | {r['tubelet']} | {r['epochs']} | {r['val_top1']:.4f} | "
            f"{r['temporal_params']:,} | {100.0 * r['temporal_params'] / backbone[r['task']]:.2f} | "
            f"{r['percent_of_backbone']:.2f} | {r['seconds']:.0f} |"
            for r in variants
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
