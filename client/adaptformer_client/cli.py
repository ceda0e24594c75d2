"""``adaptformer-client``: predict, inspect and manage adapters from a shell.

    adaptformer-client predict --task digits seven.png [more.png] [--top-k 3] [--json]
    adaptformer-client predict --task digits --task fashion seven.png     (several tasks, one request; --task '*': all)
    adaptformer-client predict --task digits --version 0123456789ab seven.png      (a kept version: or --task digits@V)
    adaptformer-client clip --task motion f0.png f1.png ... | clip.gif
    adaptformer-client adapters [TASK]
    adaptformer-client upload cars.safetensors [--task cars]
    adaptformer-client register https://example.com/cars.safetensors [--task cars] [--sha256 HEX]
    adaptformer-client versions cars
    adaptformer-client download cars [PATH] [--version V]
    adaptformer-client rollback cars [--version V]
    adaptformer-client split cars [3f2a9c1b7d4e=0.9 9c1b7d4e3f2a=0.1]   (no weights: show the split)
    adaptformer-client promote cars 9c1b7d4e3f2a
    adaptformer-client abort cars
    adaptformer-client delete cars
    adaptformer-client train defects photos/ [--epochs 15] [--method linear] [--no-wait]   (photos/<class>/<image>)
    adaptformer-client jobs [JOB]
    adaptformer-client cancel JOB
    adaptformer-client health

The server is ``--url`` (or $ADAPTFORMER_URL, default http://127.0.0.1:8000), the key ``--api-key`` (or
$ADAPTFORMER_API_KEY). An error prints one line, the server's message, and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import BaseModel

from adaptformer_client.client import DEFAULT_URL, Client
from adaptformer_client.errors import AdaptformerClientError
from adaptformer_client.types import AdapterInfo, JobInfo, MultiPredictResponse, PredictResponse, VersionList

__all__ = ["build_parser", "main"]

_BAR_WIDTH = 24
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def _add_connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Accepted before and after the command; after it, only what was given overrides the first.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--url", default=default(None), help=f"server URL ($ADAPTFORMER_URL, default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=default(None), help="API key ($ADAPTFORMER_API_KEY)")
    parser.add_argument("--timeout", type=float, default=default(30.0), help="seconds to wait (default 30)")
    parser.add_argument("--retries", type=int, default=default(3), help="retries on 503/429 and lost connections")
    parser.add_argument("--json", action="store_true", default=default(False), help="print the server's JSON answer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptformer-client", description="Client for an AdaptFormer Serve server (one ViT, many adapters)."
    )
    _add_connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, suppress=True)

    predict = commands.add_parser("predict", parents=[common], help="classify images (one answer per image)")
    predict.add_argument(
        "--task",
        required=True,
        action="append",
        help="adapter to use; repeat it for several tasks in one request ('*': every image task)",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files ('-' reads stdin)")
    predict.add_argument("--top-k", type=int, default=None, help="predictions per image (server default 5)")
    predict.add_argument("--version", default=None, help="a kept version of the task (one task only)")

    clip = commands.add_parser("clip", parents=[common], help="classify one clip: frame files or an animated GIF/WebP")
    clip.add_argument("--task", required=True, help="clip adapter to use")
    clip.add_argument("frames", nargs="+", metavar="FRAME", help="frames in order, or one animated GIF/WebP")
    clip.add_argument("--top-k", type=int, default=None, help="predictions (server default 5)")

    adapters = commands.add_parser("adapters", parents=[common], help="list adapters, or describe one")
    adapters.add_argument("task", nargs="?", help="describe this adapter")

    upload = commands.add_parser("upload", parents=[common], help="install or replace an adapter (admin)")
    upload.add_argument("file", help="the adapter .safetensors file")
    upload.add_argument("--task", default=None, help="serve it under this name instead of the file's")

    register = commands.add_parser(
        "register", parents=[common], help="have the server fetch an adapter from a URL and install it (admin)"
    )
    register.add_argument("source", help="https://, http://, file:// or hf:// URL of the .safetensors file")
    register.add_argument("--task", default=None, help="serve it under this name instead of the file's")
    register.add_argument("--sha256", default=None, help="the SHA-256 the file must have")

    versions = commands.add_parser("versions", parents=[common], help="the versions kept of a task, newest first")
    versions.add_argument("task")

    download = commands.add_parser("download", parents=[common], help="save an adapter's exact file")
    download.add_argument("task")
    download.add_argument("path", nargs="?", default=".", help="file or directory (default: ./TASK.safetensors)")
    download.add_argument("--version", default=None, help="a kept version (default: the current one)")

    rollback = commands.add_parser("rollback", parents=[common], help="make a kept version current again (admin)")
    rollback.add_argument("task")
    rollback.add_argument("--version", default=None, help="the version (default: the one before the current)")

    split = commands.add_parser(
        "split", parents=[common], help="share a task's requests between kept versions (admin), or show the split"
    )
    split.add_argument("task")
    split.add_argument("weights", nargs="*", type=_weight, help="VERSION=WEIGHT ... (weights > 0, summing to 1)")
    promote = commands.add_parser("promote", parents=[common], help="make a version of the split current (admin)")
    promote.add_argument("task")
    promote.add_argument("version")
    abort = commands.add_parser("abort", parents=[common], help="clear a split: the current version only (admin)")
    abort.add_argument("task")

    delete = commands.add_parser("delete", parents=[common], help="remove an adapter (admin)")
    delete.add_argument("task")

    train = commands.add_parser(
        "train", parents=[common], help="have the server train a task from labelled examples (admin)"
    )
    train.add_argument("task", help="the task to train (a new one, or a new version)")
    train.add_argument("examples", help="a folder of <class>/<image> (or clips), or a .zip of one")
    train.add_argument("--method", choices=["adaptformer", "linear"], default=None)
    for flag, kind in (
        ("--epochs", int),
        ("--bottleneck", int),
        ("--scale", float),
        ("--lr", float),
        ("--batch-size", int),
        ("--frames", int),
        ("--val-fraction", float),
        ("--seed", int),
    ):
        train.add_argument(flag, type=kind, default=None, help="as adaptformer train's (default: the server's)")
    train.add_argument("--layers", default=None, help="all, first:k, last:k or 0,1,2 (default all)")
    train.add_argument("--description", default=None, help="what the task answers (adapter metadata)")
    train.add_argument("--no-wait", action="store_true", help="print the queued job and return")
    train.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")

    jobs = commands.add_parser("jobs", parents=[common], help="training jobs, or one job (admin)")
    jobs.add_argument("job", nargs="?", help="show this job")
    cancel = commands.add_parser("cancel", parents=[common], help="cancel a training job (admin)")
    cancel.add_argument("job")

    commands.add_parser("health", parents=[common], help="is the server up and ready? (exit 1 while loading)")
    return parser


def _read_input(name: str) -> str | bytes:
    return sys.stdin.buffer.read() if name == "-" else name


def _bar(score: float, out: TextIO) -> str:
    score = min(max(score, 0.0), 1.0)
    eighths = round(score * _BAR_WIDTH * 8)
    bar = "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")
    try:
        bar.encode(out.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        bar = "#" * round(score * _BAR_WIDTH)
    return bar


def _print_predictions(response: PredictResponse, names: Sequence[str], out: TextIO) -> None:
    for name, predictions in zip(names, response.predictions, strict=False):
        print(name, file=out)
        width = max((len(p.label) for p in predictions), default=0)
        for p in predictions:
            print(f"  {p.label:<{width}}  {p.score:6.3f}  {_bar(p.score, out)}".rstrip(), file=out)
    print(
        f"{response.task} (version {response.version}, {response.modality}) in {response.latency_ms:.1f} ms", file=out
    )


def _print_many(answer: MultiPredictResponse, names: Sequence[str], out: TextIO) -> None:
    for i, response in enumerate(answer.results):
        if i:
            print(file=out)
        _print_predictions(response, names, out)
    print(f"{len(answer.results)} tasks in one request: {answer.latency_ms:.1f} ms", file=out)


def _print_adapters(adapters: list[AdapterInfo], out: TextIO) -> None:
    if not adapters:
        print("no adapters installed", file=out)
        return
    header = ("TASK", "VERSION", "METHOD", "MODALITY", "CLASSES", "PARAMS", "% BACKBONE", "RESIDENT")
    rows = [
        (a.task, a.version, a.method, a.modality if a.modality != "clip" else f"clip x{a.frames}", str(a.num_classes),
         f"{a.params:,}", f"{a.percent_of_backbone:.2f}", "yes" if a.resident else "no")
        for a in adapters
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _print_adapter(a: AdapterInfo, out: TextIO) -> None:
    labels = ", ".join(a.labels[:20]) + (f", ... ({len(a.labels)} in all)" if len(a.labels) > 20 else "")
    fields = [
        ("task", a.task),
        ("version", a.version),
        ("method", a.method),
        ("modality", a.modality if a.modality != "clip" else f"clip ({a.frames} frames)"),
        ("classes", f"{a.num_classes}: {labels}"),
        ("params", f"{a.params:,} ({a.percent_of_backbone:.2f}% of the backbone)"),
        ("size", f"{a.size_bytes:,} bytes"),
        ("backbone", f"{a.backbone} (fingerprint {a.fingerprint})"),
        ("config", json.dumps(a.config) if a.config is not None else "-"),
        ("metrics", ", ".join(f"{k}={v}" for k, v in a.metrics.items()) or "-"),
        ("created", a.created),
        ("resident", "yes" if a.resident else "no"),
    ]
    for key, value in fields:
        print(f"{key + ':':<10} {value}", file=out)


def _print_versions(listed: VersionList, out: TextIO) -> None:
    header = ("VERSION", "CURRENT", "SIZE", "STORED", "CREATED", "METRICS")
    rows = [
        (v.version, "*" if v.current else "", f"{v.size_bytes:,}", v.stored, v.created,
         ", ".join(f"{k}={val}" for k, val in v.metrics.items()) or "-")
        for v in listed.versions
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{listed.task}: {len(listed.versions)} versions kept (at most {listed.keep})", file=out)


def _print_job(job: JobInfo, out: TextIO) -> None:
    parts = [f"{job.job}  {job.task}  {job.status}", f"epoch {job.epoch}/{job.epochs}"]
    if job.loss is not None:
        parts.append(f"loss {job.loss:.4f}")
    if job.val_top1 is not None:
        parts.append(f"val top-1 {job.val_top1:.4f}")
    if job.version:
        parts.append(f"version {job.version}")
    if job.eta_s:
        parts.append(f"ETA {job.eta_s:.0f} s")
    if job.error:
        parts.append(f"error: {job.error}")
    print(", ".join(parts), file=out)


def _print_jobs(jobs: list[JobInfo], out: TextIO) -> None:
    if not jobs:
        print("no jobs", file=out)
    for job in jobs:
        _print_job(job, out)


def _weight(text: str) -> tuple[str, float]:
    """``VERSION=WEIGHT`` of ``split`` (the server checks the versions and the sum)."""
    version, sep, weight = text.partition("=")
    try:
        if not sep or not version:
            raise ValueError
        return version, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not VERSION=WEIGHT (e.g. 3f2a9c1b7d4e=0.9)") from None


def _show(value: BaseModel | Sequence[BaseModel], as_json: bool, print_table: Callable[[], None], out: TextIO) -> None:
    if not as_json:
        print_table()
    elif isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2), file=out)
    else:
        print(json.dumps([v.model_dump(mode="json") for v in value], indent=2), file=out)


def _run(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    if args.command == "predict":
        images = [_read_input(name) for name in args.images]
        names = ["<stdin>" if name == "-" else name for name in args.images]
        if args.version is not None:
            if len(args.task) > 1 or args.task[0] == "*":
                print("error: --version goes with one task (name several as --task NAME@VERSION)", file=sys.stderr)
                return 2
            args.task = [f"{args.task[0]}@{args.version}"]
        if len(args.task) > 1 or args.task[0] == "*":
            many = client.predict_many(args.task, images, top_k=args.top_k)
            _show(many, args.json, lambda: _print_many(many, names, out), out)
            return 0
        if len(images) == 1:
            response = client.predict(args.task[0], images[0], top_k=args.top_k)
        else:
            response = client.predict_batch(args.task[0], images, top_k=args.top_k)
        _show(response, args.json, lambda: _print_predictions(response, names, out), out)
    elif args.command == "clip":
        frames = [_read_input(name) for name in args.frames]
        response = client.predict_clip(args.task, frames if len(frames) > 1 else frames[0], top_k=args.top_k)
        name = args.frames[0] if len(frames) == 1 else f"clip of {len(frames)} frames"
        _show(response, args.json, lambda: _print_predictions(response, [name], out), out)
    elif args.command == "adapters":
        if args.task:
            adapter = client.get_adapter(args.task)
            _show(adapter, args.json, lambda: _print_adapter(adapter, out), out)
        else:
            adapters = client.list_adapters()
            _show(adapters, args.json, lambda: _print_adapters(adapters, out), out)
    elif args.command == "upload":
        result = client.upload_adapter(Path(args.file), task=args.task)
        a = result.adapter
        replaced = f"; replaced version {result.previous_version}" if result.replaced else ""
        line = f"installed {a.task} (version {a.version}, {a.num_classes} classes, {a.modality}){replaced}"
        _show(result, args.json, lambda: print(line, file=out), out)
    elif args.command == "register":
        result = client.register(args.task, source=args.source, sha256=args.sha256)
        a = result.adapter
        replaced = f"; replaced version {result.previous_version}" if result.replaced else ""
        line = f"installed {a.task} (version {a.version}) from {args.source}{replaced}"
        _show(result, args.json, lambda: print(line, file=out), out)
    elif args.command == "versions":
        listed = client.versions(args.task)
        _show(listed, args.json, lambda: _print_versions(listed, out), out)
    elif args.command == "download":
        path = client.download(args.task, args.path, version=args.version)
        if args.json:
            print(json.dumps({"task": args.task, "path": str(path), "size_bytes": path.stat().st_size}), file=out)
        else:
            print(f"saved {args.task} to {path} ({path.stat().st_size:,} bytes)", file=out)
    elif args.command == "rollback":
        rolled = client.rollback(args.task, args.version)
        line = f"{args.task}: version {rolled.adapter.version} is current (was {rolled.previous_version})"
        _show(rolled, args.json, lambda: print(line, file=out), out)
    elif args.command in ("split", "abort"):
        if args.command == "abort":
            shared = client.abort_split(args.task)
        elif args.weights:
            shared = client.split(args.task, dict(args.weights))
        else:
            shared = client.get_split(args.task)
        shares = ", ".join(f"{v} {w:g}" for v, w in shared.versions.items())
        line = f"{shared.task}: {shares}" + ("" if shared.active else " (no split: the current version)")
        _show(shared, args.json, lambda: print(line, file=out), out)
    elif args.command == "promote":
        promoted = client.promote(args.task, args.version)
        line = f"{args.task}: version {promoted.adapter.version} is current (was {promoted.previous_version}), split cleared"
        _show(promoted, args.json, lambda: print(line, file=out), out)
    elif args.command == "delete":
        deleted = client.delete_adapter(args.task)
        line = f"deleted {deleted.task} (version {deleted.version})"
        _show(deleted, args.json, lambda: print(line, file=out), out)
    elif args.command == "train":
        options = {k: getattr(args, k) for k in ("method", "epochs", "bottleneck", "scale", "lr", "batch_size",
                                                 "frames", "val_fraction", "seed", "layers", "description")}  # fmt: skip
        job = client.train(args.task, args.examples, **options)
        if not args.no_wait:
            job.wait(progress=not args.no_progress and not args.json)
        _show(job.info, args.json, lambda: _print_job(job.info, out), out)
    elif args.command == "jobs":
        if args.job:
            info = client.job(args.job).info
            _show(info, args.json, lambda: _print_job(info, out), out)
        else:
            all_jobs = client.jobs()
            _show(all_jobs, args.json, lambda: _print_jobs(all_jobs, out), out)
    elif args.command == "cancel":
        info = client.job(args.job).cancel()
        _show(info, args.json, lambda: _print_job(info, out), out)
    elif args.command == "health":
        health = client.health()
        ready = client.ready()
        if args.json:
            print(json.dumps({"health": health.model_dump(), "ready": ready.model_dump()}, indent=2), file=out)
        elif ready.is_ready:
            print(f"{health.status}; ready: backbone {ready.backbone}, {ready.adapters} adapters", file=out)
        else:
            print(f"{health.status}; {ready.status}", file=out)
        return 0 if ready.is_ready else 1
    return 0


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Runs the command line; returns the exit status.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).
        transport: An ``httpx`` transport for the client (tests pass ``httpx.MockTransport``).
    """
    args = build_parser().parse_args(argv)
    url = args.url or os.environ.get("ADAPTFORMER_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("ADAPTFORMER_API_KEY") or None
    try:
        with Client(url, api_key, timeout=args.timeout, max_retries=args.retries, transport=transport) as client:
            return _run(args, client, sys.stdout)
    except AdaptformerClientError as e:
        print(f"error: {' '.join(e.message.split())}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename}" if e.filename else f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
