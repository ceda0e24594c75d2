"""A clip task's temporal part, per variant: its size (share of the backbone) and what it buys on the clip sources.

    python -m benchmarks.temporal_parts                    # the table (embedded backbone; minutes on 2 CPU cores)
    python -m benchmarks.temporal_parts --train 240 --epochs 4 --seeds 0
    python -m benchmarks.temporal_parts --shares-only     # the parameter shares alone, printed (seconds)

Writes docs/benchmarks/temporal_parts.{json,md}. Each variant trains AdaptFormer branches (the library's default
recipe, ``--epochs`` and ``--batch`` set here) with that temporal part on the built-in ``motion`` and
``zoom-rotate`` clips (8 frames, tubelet 2, ``--train`` training and as many validation clips over other
photographs), with the label-true clip augmentation on (one row with it off). Parameter shares are counted on the
embedded backbone, ViT-S/16 and ViT-B/16 (random weights, built offline), and a whole d^=64 clip task on ViT-B/16
(branches in all 12 blocks, a 174-class head, the temporal part).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import timm
import torch

from adaptformer.backbone import load_backbone
from adaptformer.config import AdapterConfig
from adaptformer.data import load_data
from adaptformer.temporal import TemporalConfig
from adaptformer.train import TrainConfig, build_model, fit
from adaptformer.video import video_vit
from benchmarks.machine import table

VARIANTS = ["none", "diff", "low", "proj", "low+proj", "low+proj+mix"]
SOURCES = ["motion", "zoom-rotate"]
OUT = Path("docs/benchmarks")


def _frozen(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head."))


def _part_params(vit: torch.nn.Module, variant: str) -> int:
    part = video_vit(vit, frames=8, tubelet=2, temporal=TemporalConfig.parse(variant)).temporal
    return sum(p.numel() for p in part.parameters()) if part is not None else 0


def shares(variants: list[str]) -> dict:
    """Parameters per variant and their share of each backbone; the d^=64 ViT-B/16 clip task's share."""
    backbones = {
        "embedded": load_backbone().model,
        "vit_small_patch16_224": timm.create_model("vit_small_patch16_224", pretrained=False),
        "vit_base_patch16_224": timm.create_model("vit_base_patch16_224", pretrained=False),
    }
    out: dict = {"backbone_params": {k: _frozen(v) for k, v in backbones.items()}, "variants": {}}
    for variant in variants:
        row = {}
        for name, vit in backbones.items():
            n = _part_params(vit, variant)
            row[name] = {"params": n, "percent": round(100 * n / _frozen(vit), 4)}
        out["variants"][variant] = row
    vitb: Any = backbones["vit_base_patch16_224"]
    d, blocks = vitb.embed_dim, len(vitb.blocks)
    branches = blocks * (2 * d * 64 + 64 + d)  # W_down, W_up and their biases per block
    head = 174 * d + 174
    out["vit_b16_task_d64"] = {
        variant: round(100 * (branches + head + out["variants"][variant]["vit_base_patch16_224"]["params"])
                       / _frozen(vitb), 3)
        for variant in variants
    }  # fmt: skip
    return out


def run(source: str, variant: str, seed: int, args: argparse.Namespace, augment: bool = True) -> dict:
    backbone = load_backbone()
    splits = load_data(source, backbone.spec, frames=8, val_fraction=0.5, seed=seed, limit=args.train, progress=False)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, device="cpu", seed=seed, temporal=variant,
                      clip_augment=augment)  # fmt: skip
    model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
    started = time.perf_counter()
    result = fit(model, splits, cfg, progress=False)
    return {
        "source": source, "variant": variant, "seed": seed, "augment": augment,
        "val_top1": result.metrics["val_top1"], "train_top1": result.history[-1]["train_top1"],
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=240, help="training (and validation) clips per source")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--no-augment-row", default="low+proj", help="the variant also run without augmentation")
    p.add_argument("--shares-only", action="store_true", help="print the parameter shares of the variants; train none")
    args = p.parse_args()
    if args.shares_only:
        print("\n".join(share_table(shares(args.variants))))
        return
    torch.set_num_threads(2)
    runs = []
    for seed in args.seeds:
        for source in SOURCES:
            for variant in args.variants:
                runs.append(run(source, variant, seed, args))
                print(json.dumps(runs[-1]), flush=True)
            if args.no_augment_row:
                runs.append(run(source, args.no_augment_row, seed, args, augment=False))
                print(json.dumps(runs[-1]), flush=True)
    report = {
        "command": "python -m benchmarks.temporal_parts " + " ".join(
            f"--train {args.train} --epochs {args.epochs} --batch {args.batch} --seeds "
            f"{' '.join(map(str, args.seeds))}".split()),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "recipe": {"train_clips": args.train, "val_clips": args.train, "frames": 8, "tubelet": 2,
                   "epochs": args.epochs, "batch": args.batch, "bottleneck": AdapterConfig().bottleneck},
        **shares(args.variants),
        "runs": runs,
    }  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "temporal_parts.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "temporal_parts.md").write_text(render(report))


def share_table(r: dict) -> list[str]:
    """The parameters of each variant as a share of each backbone, and of the d^=64 ViT-B/16 clip task."""
    names = {"embedded": "embedded", "vit_small_patch16_224": "ViT-S/16", "vit_base_patch16_224": "ViT-B/16"}
    columns = [f"{label} ({r['backbone_params'][k]:,})" for k, label in names.items()]
    return table(
        ["temporal part", *columns, "d^=64 clip task on ViT-B/16"],
        (
            [
                f"`{v}`",
                *(f"{row[k]['params']:,} ({row[k]['percent']:.3f}%)" for k in names),
                f"{r['vit_b16_task_d64'][v]:.2f}%",
            ]
            for v, row in r["variants"].items()
        ),
    )


def render(r: dict) -> str:
    rows = []
    keys = [(v, True) for v in r["variants"]] + [
        (v, False) for v in {x["variant"] for x in r["runs"] if not x["augment"]}
    ]
    for variant, aug in keys:
        sel = {s: [x for x in r["runs"] if x["variant"] == variant and x["augment"] == aug and x["source"] == s]
               for s in SOURCES}  # fmt: skip
        acc = {s: statistics.median(x["val_top1"] for x in v) if v else float("nan") for s, v in sel.items()}
        secs = statistics.median(x["seconds"] for v in sel.values() for x in v)
        share = r["variants"][variant]
        rows.append(
            f"| `{variant}`{'' if aug else ' (no augmentation)'} | {share['embedded']['params']:,} | "
            f"{share['embedded']['percent']:.3f}% | {share['vit_small_patch16_224']['params']:,} | "
            f"{share['vit_small_patch16_224']['percent']:.3f}% | {acc['motion']:.3f} | {acc['zoom-rotate']:.3f} | "
            f"{secs:.0f} s |"
        )
    rc = r["recipe"]
    task = " · ".join(f"`{v}` {p:.2f}%" for v, p in r["vit_b16_task_d64"].items())
    return "\n".join([
        "# Temporal parts of a clip task: size and accuracy",
        "",
        f"Command: `{r['command']}` ({r['machine']['cpu']}, {r['machine']['threads']} threads, torch "
        f"{r['machine']['torch']}).",
        "",
        f"Embedded backbone ({r['backbone_params']['embedded']:,} frozen parameters), AdaptFormer branches "
        f"(d^={rc['bottleneck']}) + head + the temporal part, {rc['train_clips']} training / {rc['val_clips']} "
        f"validation clips of {rc['frames']} frames (tubelet {rc['tubelet']}), {rc['epochs']} epochs, batch "
        f"{rc['batch']}, the label-true clip augmentation on unless the row says otherwise; val top-1 is the median "
        "over seeds (chance: motion 0.125, zoom-rotate 0.25). Shares are of the frozen backbone (head excluded); "
        f"ViT-S/16 has {r['backbone_params']['vit_small_patch16_224']:,}. Time: training of one run (median).",
        "",
        "| temporal part | params (embedded) | % embedded | params (ViT-S/16) | % ViT-S/16 | motion top-1 | "
        "zoom-rotate top-1 | time |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"A d^=64 clip task on ViT-B/16 ({r['backbone_params']['vit_base_patch16_224']:,} parameters; branches in "
        f"all 12 blocks, a 174-class head, the temporal part), as % of the backbone: {task}.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
