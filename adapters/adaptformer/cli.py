"""The ``adaptformer`` command: train, eval, inspect, serve."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

__all__ = ["main"]

_ROLE = re.compile(r":[a-z]+:`~?([\w.]+)`")  # :mod:`a.b` -> a.b


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's text in the ``Args:`` table of a dataclass's docstring, as one line of plain text."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    name = None
    for line in lines[start:]:
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name, docs[entry[1]] = entry[1], entry[2]
        elif name is not None and line.startswith("        "):
            docs[name] += " " + line.strip()
        else:
            break
    return {k: _plain(v) for k, v in docs.items()}


def _plain(text: str) -> str:
    """Docstring markup as help text: no ``literals`` or roles, a lower-case start, no final full stop."""
    text = _ROLE.sub(r"\1", text).replace("``", "").rstrip(".")
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if len(first) == 1 or first[1:].islower() else text


def _add_field(group: Any, cls: type, name: str) -> None:
    """One ``--flag`` for a dataclass field: its type, default, choices (a Literal) and help (its docstring)."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    kind = typing.get_type_hints(cls)[name]
    default = spec.default
    doc = _field_docs(cls).get(name)
    help_text = None if doc is None else doc.replace("%", "%%")  # argparse formats help with %
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        if default:  # on unless turned off
            group.add_argument(f"--no-{flag[2:]}", dest=f"no_{name}", action="store_true", help=f"no {help_text}")
        else:
            group.add_argument(flag, action="store_true", help=help_text)
        return
    kwargs: dict[str, Any] = {"default": default, "help": help_text}
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(kind))
    elif "parse" in spec.metadata:
        kwargs["type"] = spec.metadata["parse"]
    elif kind in (int, float):
        kwargs["type"] = kind
    if "metavar" in spec.metadata:
        kwargs["metavar"] = spec.metadata["metavar"]
    group.add_argument(flag, **kwargs)


def _config_fields(cls: type) -> list[str]:
    """The fields of a config dataclass that are flags (a nested config has its own)."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]


def _config(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """A config dataclass from the parsed flags of its fields (and ``given`` for the rest)."""
    values = dict(given)
    for name in _config_fields(cls):
        if hasattr(args, f"no_{name}"):
            values[name] = not getattr(args, f"no_{name}")
        else:
            values[name] = getattr(args, name)
    return cls(**values)


def _add_backbone_args(p: argparse.ArgumentParser) -> None:
    from adaptformer.train import TrainConfig

    p.add_argument(
        "--backbone",
        default="embedded",
        help="'embedded' (default), a timm ViT name, or videomae-small|base|large|huge (a VideoMAE checkpoint: "
        "--weights required)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="local backbone weights (safetensors or state dict; for videomae-* also a Hugging Face model folder)",
    )
    _add_field(p, TrainConfig, "device")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from adaptformer.data import BUILTIN_SOURCES

    p.add_argument("--data", required=True, help=f"built-in ({', '.join(BUILTIN_SOURCES)}) or an ImageFolder path")
    p.add_argument("--frames", type=int, help="frames per clip (clip data)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when the data has no split")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/validation split")
    p.add_argument("--limit", type=int, help="use at most this many training samples")


def build_parser() -> argparse.ArgumentParser:
    from adaptformer.config import AdapterConfig
    from adaptformer.train import SMALL_DATA, SMALL_DATA_PER_CLASS, TrainConfig

    parser = argparse.ArgumentParser(prog="adaptformer", description="AdaptFormer: train, evaluate, inspect, serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train", help="train a task on the frozen backbone", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    t.add_argument("--task", required=True, help="task name (stored in the adapter file)")
    _add_data_args(t)
    _add_field(t, TrainConfig, "method")
    t.add_argument("--out", type=Path, help="output file (default adapters/<task>.safetensors)")
    t.add_argument("--description", help="one line: what the task answers (default: the built-in source's)")
    t.add_argument(
        "--input-note",
        help="what callers must send beyond size and normalisation, e.g. 'a light digit on a dark background' "
        "(default: the built-in source's)",
    )
    # The config fields' flags are generated: a field added to AdapterConfig or TrainConfig is a flag at once.
    defaults = ", ".join(f"--{flag.replace('_', '-')} {SMALL_DATA[key]}" for flag, key in _SMALL_DATA_FLAGS.items())
    small = (
        f"On a training set of at most {SMALL_DATA_PER_CLASS} examples per class the small-data recipe's defaults "
        f"apply ({defaults}); a flag given keeps its value."
    )
    adapter = t.add_argument_group("adaptformer", description=small)
    for name in _config_fields(AdapterConfig):
        _add_field(adapter, AdapterConfig, name)
    vpt, g = t.add_argument_group("vpt"), t.add_argument_group("recipe", description=small)
    for name in _config_fields(TrainConfig):
        if name not in ("method", "device"):  # beside --task, and with --backbone (eval has it too)
            _add_field(vpt if name in ("prompt_tokens", "vpt_deep") else g, TrainConfig, name)
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


# train flags whose defaults the small-data recipe changes -> its keys (adaptformer.train.SMALL_DATA)
_SMALL_DATA_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "bottleneck": "adapter.bottleneck",
                     "scale": "adapter.scale"}  # fmt: skip


def _given(argv: list[str]) -> set[str]:
    """The small-data recipe's keys whose ``train`` flags the command line gives (a default is not a choice)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return {key for flag, key in _SMALL_DATA_FLAGS.items() if flag in given}


def _train(args: argparse.Namespace) -> None:
    from adaptformer.backbone import load_backbone
    from adaptformer.config import AdapterConfig
    from adaptformer.data import load_data
    from adaptformer.train import (
        SMALL_DATA_PER_CLASS,
        TrainConfig,
        build_model,
        fit,
        is_small,
        save_result,
        small_data_recipe,
    )

    cfg = _config(TrainConfig, args, adapter=_config(AdapterConfig, args))
    out = args.out or Path("adapters") / f"{args.task}.safetensors"
    backbone = load_backbone(args.backbone, args.weights)
    splits = load_data(args.data, backbone.spec, frames=args.frames, val_fraction=args.val_fraction,
                       seed=args.data_seed, limit=args.limit, progress=not args.quiet)  # fmt: skip
    if len(splits.labels) < 2:
        raise ValueError(f"{args.data} has one class; a classifier needs at least two")
    recipe = ""
    if is_small(len(splits.train.y), len(splits.labels)):
        cfg = small_data_recipe(cfg, keep=getattr(args, "given", ()))
        recipe = (
            f"; at most {SMALL_DATA_PER_CLASS} per class: the small-data recipe (d^={cfg.adapter.bottleneck}, "
            f"s={cfg.adapter.scale:g}, {cfg.epochs} epochs, batch {cfg.batch_size}; flags given keep their values)"
        )
    model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
    print(
        f"task {args.task}: {args.method} on {backbone.name}, {len(splits.train.y)} train / {len(splits.val.y)} val "
        f"{splits.modality}s, {len(splits.labels)} classes{recipe}",
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
    if args.command == "train":
        args.given = _given(argv)
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
