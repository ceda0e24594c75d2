"""The ``adaptformer`` command: train, eval, inspect, serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _layers(value: str) -> str | tuple[int, ...]:
    if "," in value or value.lstrip("-").isdigit():
        return tuple(int(v) for v in value.split(",") if v.strip())
    return value


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="embedded", help="'embedded' (default) or a timm ViT name")
    p.add_argument("--weights", type=Path, help="local backbone weights (safetensors or state dict)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from adaptformer.data import BUILTIN_SOURCES

    p.add_argument("--data", required=True, help=f"built-in ({', '.join(BUILTIN_SOURCES)}) or an ImageFolder path")
    p.add_argument("--frames", type=int, help="frames per clip (clip data)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when the data has no split")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--limit", type=int, help="use at most this many training samples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer: train, evaluate, inspect, serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train a task on the frozen backbone", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    t.add_argument("--task", required=True, help="task name (stored in the adapter file)")
    _add_data_args(t)
    t.add_argument("--method", default="adaptformer", choices=["adaptformer", "linear", "vpt", "full"])
    t.add_argument("--out", type=Path, help="output file (default adapters/<task>.safetensors)")
    t.add_argument("--description", help="one line: what the task answers (default: the built-in source's)")
    t.add_argument(
        "--input-note",
        help="what callers must send beyond size and normalisation, e.g. 'a light digit on a dark background' "
        "(default: the built-in source's)",
    )
    g = t.add_argument_group("adaptformer")
    g.add_argument("--bottleneck", type=int, default=64, help="hidden width d^ of each branch (1..512)")
    g.add_argument("--scale", type=float, default=0.1, help="scale s of the branch output")
    g.add_argument("--learnable-scale", action="store_true", help="train s (starting from --scale)")
    g.add_argument("--layers", type=_layers, default="all", help="all, first:k, last:k or indices like 0,1,2")
    g.add_argument("--mode", default="parallel", choices=["parallel", "sequential"])
    g.add_argument("--adapter-input", default="ln", choices=["ln", "raw", "own_ln"])
    g.add_argument("--dropout", type=float, default=0.0)
    g = t.add_argument_group("vpt")
    g.add_argument("--prompt-tokens", type=int, default=4)
    g.add_argument("--vpt-deep", action="store_true", help="prompts in every block")
    g = t.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=5e-3)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    g.add_argument("--tubelet", type=int, default=2, help="frames per space-time token (clips)")
    g.add_argument(
        "--temporal",
        default="auto",
        help="a clip task's temporal parts: auto (diff; none for linear), none, or a +-list of diff, time, mix",
    )
    g.add_argument("--eval-every", type=int, default=1, metavar="N", help="validate every N epochs (and the last)")
    g.add_argument("--resume", action="store_true", help="continue from <out>.ckpt when present")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_backbone_args(t)

    e = sub.add_parser("eval", help="evaluate an adapter file or checkpoint on a data set")
    e.add_argument("--adapter", type=Path, required=True)
    _add_data_args(e)
    _add_backbone_args(e)

    i = sub.add_parser("inspect", help="print an adapter file's metadata and size")
    i.add_argument("file", type=Path)
    i.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("serve", help="start the inference server (see: adaptformer serve --help)", add_help=False)
    return parser


def _train(args: argparse.Namespace) -> None:
    from adaptformer.backbone import load_backbone
    from adaptformer.config import AdapterConfig
    from adaptformer.data import load_data
    from adaptformer.train import TrainConfig, build_model, fit, save_result

    adapter = AdapterConfig(
        bottleneck=args.bottleneck, scale=args.scale, learnable_scale=args.learnable_scale, layers=args.layers,
        mode=args.mode, adapter_input=args.adapter_input, dropout=args.dropout,
    )  # fmt: skip
    cfg = TrainConfig(
        method=args.method, adapter=adapter, prompt_tokens=args.prompt_tokens, vpt_deep=args.vpt_deep,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, optimizer=args.optimizer, seed=args.seed, device=args.device,
        amp=not args.no_amp, tubelet=args.tubelet, eval_every=args.eval_every, temporal=args.temporal,
    )  # fmt: skip
    out = args.out or Path("adapters") / f"{args.task}.safetensors"
    backbone = load_backbone(args.backbone, args.weights)
    splits = load_data(args.data, backbone.spec, frames=args.frames, val_fraction=args.val_fraction,
                       seed=args.data_seed, limit=args.limit, progress=not args.quiet)  # fmt: skip
    if len(splits.labels) < 2:
        raise ValueError(f"{args.data} has one class; a classifier needs at least two")
    model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
    print(
        f"task {args.task}: {args.method} on {backbone.name}, {len(splits.train.y)} train / {len(splits.val.y)} val "
        f"{splits.modality}s, {len(splits.labels)} classes",
        flush=True,
    )
    ckpt = out.with_name(out.name + ".ckpt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    result = fit(model, splits, cfg, checkpoint=ckpt, resume=args.resume, progress=not args.quiet)
    data_args = {"source": args.data, "frames": splits.frames, "val_fraction": args.val_fraction,
                 "data_seed": args.data_seed, "limit": args.limit}  # fmt: skip
    command = "adaptformer " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("adaptformer") else None
    summary = save_result(result, out, args.task, splits, backbone, extra={"data_args": data_args, "command": command},
                          description=args.description, input_note=args.input_note)  # fmt: skip
    ckpt.unlink(missing_ok=True)
    m = summary["metrics"]
    kind = (
        "adapter" if summary["servable"] else "checkpoint (evaluation only; the server serves adaptformer and linear)"
    )
    print(
        f"done in {result.seconds:.0f} s: val top-1 {m['val_top1']:.4f}, {m['trainable_params']:,} trainable parameters "
        f"({m['percent_of_backbone']:.2f}% of the backbone)\nwrote {kind} {out} and {out.stem}.metrics.json"
    )


def _eval(args: argparse.Namespace) -> None:
    from adaptformer.backbone import load_backbone
    from adaptformer.data import load_data
    from adaptformer.evaluate import evaluate_file

    backbone = load_backbone(args.backbone, args.weights)
    result = evaluate_file(args.adapter, backbone, lambda spec, frames: load_data(
        args.data, spec, frames=frames, val_fraction=args.val_fraction, seed=args.data_seed, limit=args.limit))  # fmt: skip
    print(json.dumps(result, indent=2))


def _inspect(args: argparse.Namespace) -> None:
    from adaptformer.evaluate import describe_file

    info = describe_file(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        text = v if isinstance(v, str) else json.dumps(v)
        if len(text) > 160:
            text = text[:157] + "..."
        print(f"{k:<{width}}  {text}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        try:
            from adaptformer_server.cli import main as serve_main
        except ImportError as e:
            sys.exit(f"adaptformer: error: the server is not installed ({e}); pip install 'adaptformer-serve[server]'")
        serve_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    from adaptformer.errors import AdaptformerError

    try:
        {"train": _train, "eval": _eval, "inspect": _inspect}[args.command](args)
    except (AdaptformerError, ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.exit(f"adaptformer: error: {message}")
    except KeyboardInterrupt:
        sys.exit("adaptformer: interrupted (rerun with --resume to continue from the last epoch)")


if __name__ == "__main__":
    main()
