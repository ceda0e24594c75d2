"""The training recipe of a small clip task: what the defaults reach, beside the recipes they were chosen from.

    python -m benchmarks.clip_recipe --out docs/benchmarks/clip_recipe.md        # tens of minutes on 2 CPU cores
    python -m benchmarks.clip_recipe --train 32 --recipes small-data --sources zoom-rotate   # a smoke run
    python -m benchmarks.clip_recipe --backbone vit_small_patch16_224 --img-size 112 --threads 1 \
        --recipes 'small-data, diff' 'small-data, low' --sources motion          # a real-size patch kernel

Each recipe trains a clip task (AdaptFormer branches, head and temporal part, the library's
:class:`adaptformer.train.TrainConfig` with the recipe's fields changed) on the embedded backbone, or on a timm ViT
with random weights (``--backbone``, ``--img-size``), on the built-in clip sources
(8 frames, ``--train`` training clips and as many validation clips over other photographs), and reports the
validation and training top-1 of its last epoch, its optimizer steps and its time. ``batch 64, 10 epochs`` is
``TrainConfig()``'s recipe; ``small-data`` is what ``adaptformer train`` uses on sets this small
(:data:`adaptformer.train.SMALL_DATA`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from adaptformer.backbone import EMBEDDED, Backbone, load_backbone
from adaptformer.config import AdapterConfig
from adaptformer.data import load_data
from adaptformer.model import check_supported
from adaptformer.preprocess import spec_from_model
from adaptformer.train import TrainConfig, build_model, fit
from benchmarks.machine import finish, header, report_head, table

# name -> the TrainConfig fields it changes. "batch 64, 10 epochs" is TrainConfig()'s own recipe; "small-data" is
# adaptformer.train.SMALL_DATA (d^=16, s=0.5, 20 epochs, batch 16), what `adaptformer train` and the server's
# training jobs use on a set of at most 200 examples per class, such as these.
SMALL = {"batch_size": 16, "epochs": 20, "adapter": AdapterConfig(bottleneck=16, scale=0.5)}
RECIPES: dict[str, dict[str, Any]] = {
    "batch 64, 10 epochs": {"batch_size": 64, "epochs": 10},
    "batch 64, 30 epochs": {"batch_size": 64, "epochs": 30},
    "batch 16, 10 epochs": {"batch_size": 16, "epochs": 10},
    "batch 16, 10 epochs, low+proj": {"batch_size": 16, "epochs": 10, "temporal": "low+proj"},
    "small-data": SMALL,
    "small-data, low+proj": {**SMALL, "temporal": "low+proj"},
    "small-data, diff": {**SMALL, "temporal": "diff"},
    "small-data, low": {**SMALL, "temporal": "low"},
}
SOURCES = ["zoom-rotate", "motion"]
CHANCE = {"zoom-rotate": 0.25, "motion": 0.125}


def make_backbone(name: str, img_size: int | None) -> Backbone:
    """The embedded backbone, or the timm ViT ``name`` with random weights (seed 0) at ``img_size`` pixels."""
    if name == EMBEDDED:
        return load_backbone()
    import timm

    torch.manual_seed(0)
    sized: dict[str, Any] = {"img_size": img_size} if img_size else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, **sized).eval()
    check_supported(model)  # as load_backbone does: a family the library cannot adapt is refused with its reason
    return Backbone(model, name, spec_from_model(model))


def run(
    source: str, recipe: str, seed: int, train: int, backbone_name: str = EMBEDDED, img_size: int | None = None
) -> dict:
    backbone = make_backbone(backbone_name, img_size)
    splits = load_data(source, backbone.spec, frames=8, val_fraction=0.5, seed=seed, limit=train, progress=False)
    cfg = TrainConfig(device="cpu", seed=seed, **RECIPES[recipe])
    model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
    started = time.perf_counter()
    result = fit(model, splits, cfg, progress=False)
    return {
        "backbone": backbone.name,
        "image_size": backbone.spec.size,
        "source": source,
        "recipe": recipe,
        "seed": seed,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "bottleneck": cfg.adapter.bottleneck,
        "scale": cfg.adapter.scale,
        "temporal": str(cfg.temporal_config(backbone.model)),
        "low_rank": _low_rank(model),
        "steps": cfg.epochs * math.ceil(len(splits.train.y) / cfg.batch_size),
        "val_top1": round(result.metrics["val_top1"], 4),
        "train_top1": round(result.history[-1]["train_top1"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _low_rank(model: torch.nn.Module) -> int | None:
    """The rank of the clip task's ``low`` kernel (``None`` without one)."""
    ups = [p for name, p in model.named_parameters() if name.endswith("temporal.low_up")]
    return int(ups[0].shape[1]) if ups else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=160, help="training (and validation) clips per source")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--sources", nargs="+", default=SOURCES, choices=SOURCES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backbone", default=EMBEDDED, help="'embedded' or a timm ViT name (random weights, seed 0)")
    p.add_argument("--img-size", type=int, default=None, help="input size of a timm ViT (default: its own)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = header("benchmarks.clip_recipe", argv, args.note)
    results.update(train=args.train, threads=args.threads, backbone=args.backbone, img_size=args.img_size, runs=[])
    for seed in args.seeds:
        for source in args.sources:
            for recipe in args.recipes:
                row = run(source, recipe, seed, args.train, args.backbone, args.img_size)
                results["runs"].append(row)
                print(row, flush=True)
    finish(args.out, results, render)


def render(r: dict) -> str:
    runs = r["runs"]
    where = (
        "Embedded backbone"
        if r.get("backbone", EMBEDDED) == EMBEDDED
        else f"`{r['backbone']}` with random weights (seed 0) at {runs[0]['image_size'] if runs else '?'} px"
    )
    setup = (
        f" {where}, {r['train']} training and {r['train']} validation clips of 8 frames per source, "
        f"{r['threads']} torch threads; what a recipe does not change is `TrainConfig()`'s (lr 5e-3 with a warmup "
        "epoch and cosine decay, AdamW, the label-true clip augmentation). Top-1 of the last epoch; chance: "
        "zoom-rotate 0.25, motion 0.125. `batch 64, 10 epochs` is `TrainConfig()`'s recipe; `small-data` is "
        "`adaptformer.train.SMALL_DATA`, what `adaptformer train` and the server's training jobs use on a set of at "
        "most 200 examples per class, as here."
    )
    lines = report_head("The training recipe of a small clip task", r, setup)
    lines += table(
        [
            "source",
            "recipe",
            "seed",
            "batch",
            "epochs",
            "steps",
            "d^",
            "s",
            "temporal",
            "val top-1",
            "train top-1",
            "time (s)",
        ],
        (
            [
                x["source"],
                x["recipe"],
                x["seed"],
                x["batch_size"],
                x["epochs"],
                x["steps"],
                x["bottleneck"],
                x["scale"],
                f"`{x['temporal']}`" + (f" (rank {x['low_rank']})" if x.get("low_rank") else ""),
                f"{x['val_top1']:.3f}",
                f"{x['train_top1']:.3f}",
                f"{x['seconds']:.0f}",
            ]
            for x in r["runs"]
        ),
        left=2,
    )
    seeds = sorted({x["seed"] for x in r["runs"]})
    if len(seeds) > 1:
        groups: dict[tuple[str, str], list[float]] = {}
        for x in r["runs"]:
            groups.setdefault((x["source"], x["recipe"]), []).append(x["val_top1"])
        lines += ["", f"Val top-1 over seeds {', '.join(map(str, seeds))}:", ""]
        lines += table(
            ["source", "recipe", "mean", "min", "max"],
            ([*key, *(f"{f(v):.3f}" for f in (statistics.mean, min, max))] for key, v in groups.items()),
            left=2,
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
