"""Tests AdaptFormer's claims on a backbone: tuned methods, ablations, paired bootstrap intervals, verdicts.

    python -m benchmarks.transfer            # the committed study (5 seeds; about an hour on 2 CPU cores)
    python -m benchmarks.transfer --quick    # pipeline smoke run (well under a minute): checks the code, not the claims
    python -m benchmarks.transfer --backbone vit_small_patch16_224 --weights FILE   # another timm ViT

Writes docs/benchmarks/transfer.{json,md}, transfer_claims.svg and transfer_features.svg (``transfer_quick*``
in quick mode, ``transfer_<backbone>*`` for another backbone). Each finished run is appended to a log
(``--log``); a rerun after an interruption reuses those rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.transfer.claims import Results, check_claims, parameter_counts
from benchmarks.transfer.plan import BUDGETS, Run, followups, plan, settings
from benchmarks.transfer.report import write_outputs
from benchmarks.transfer.runner import BackboneChoice, execute


def _commit() -> str:
    """HEAD's short hash, with ``+changes`` when the study's own code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks/transfer", "adapters"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def _stem(budget: str, backbone: str) -> str:
    stem = "transfer" if backbone == "embedded" else f"transfer_{backbone.replace('/', '_')}"
    return stem if budget == "full" else f"{stem}_{budget}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, 2 seeds, small grids (a smoke test)")
    p.add_argument("--backbone", default="embedded", help="'embedded' or a timm ViT name (default: embedded)")
    p.add_argument("--weights", default=None, help="local weights for --backbone (safetensors or a state dict)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where the report goes")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="training processes (one thread each when there are as many cores)")  # fmt: skip
    p.add_argument("--log", type=Path, default=None,
                   help="append each finished run here and reuse the rows it holds (default: <out>/.<stem>.jsonl)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=0,
                   help="train seeds 0..N-1 instead of the budget's (a run's rows stay valid for any N)")  # fmt: skip
    p.add_argument("--settings", type=int, default=0,
                   help="train only the first N settings (a smoke run of a slow backbone); 0: all")  # fmt: skip
    p.add_argument("--until", default=None,
                   help="HH:MM (UTC): start no run after this time and report what finished")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="ignore the log's rows (start over)")
    p.add_argument("--render", action="store_true",
                   help="train nothing: rewrite the report and plots from the JSON already in --out")  # fmt: skip
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    budget = BUDGETS["quick" if args.quick else "full"]
    if args.seeds:
        budget = replace(budget, seeds=tuple(range(args.seeds)))
    backbone = BackboneChoice(args.backbone, args.weights)
    stem = _stem(budget.name, args.backbone)
    args.out.mkdir(parents=True, exist_ok=True)
    width = backbone.load().model.embed_dim
    if args.render:
        return _render(budget, args.out, stem, width)
    log = args.log or args.out / f".{stem}.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    started, commit = time.time(), _commit()  # the code that ran, not what was committed while it ran
    order = {s: i for i, s in enumerate(settings(budget, width))}
    keep = set(list(order)[: args.settings or len(order)])
    rows, reused = execute(
        budget, [r for r in plan(budget, width) if r.setting in keep],
        lambda rows: [r for r in followups(budget, width, rows) if r.setting in keep],
        lambda r: (order[r.setting], r.seed, r.lr), workers=args.workers, backbone=backbone,
        sweep_task=budget.sweep_task, log=log, until=_until(args.until),
    )  # fmt: skip
    res = Results(rows, budget, width)
    params = parameter_counts(backbone=backbone)
    claims = check_claims(res, params)
    command = "python -m benchmarks.transfer" + (" --quick" if args.quick else "")
    command += f" --seeds {args.seeds}" if args.seeds else ""
    command += f" --settings {args.settings}" if args.settings else ""
    command += f" --until {args.until}" if args.until else ""
    if args.backbone != "embedded":
        command += f" --backbone {args.backbone}" + (f" --weights {args.weights}" if args.weights else "")
    meta = {
        "command": command,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.workers} worker processes, "
        f"Python {platform.python_version()}",
        "wall_seconds": round(time.time() - started),
        "runs": len(rows),
        "reused": reused,
        "budget": budget.name,
        "backbone": args.backbone,
        "width": width,
        "recipe": budget.describe(),
    }
    write_outputs(res, claims, sorted(rows, key=_order), meta, params, args.out, stem)
    for c in claims:
        print(f"claim {c.id:2d}: {c.verdict:13s} {c.claim}")


def _render(budget, out: Path, stem: str, width: int) -> None:
    """The report and plots of an earlier invocation, from its JSON (its command, commit and wall time kept)."""
    path = out / f"{stem}.json"
    if not path.exists():
        raise SystemExit(f"--render: {path} does not exist; run the study first")
    doc = json.loads(path.read_text())
    res = Results(doc["runs"], budget, doc["meta"].get("width", width))
    write_outputs(res, check_claims(res, doc["parameters"]), doc["runs"], doc["meta"], doc["parameters"], out, stem)


def _until(hhmm: str | None) -> float | None:
    """Today's HH:MM in UTC as an epoch time (tomorrow's when it has passed by more than 12 hours)."""
    if not hhmm:
        return None
    h, m = (int(x) for x in hhmm.split(":"))
    now = time.time()
    t = now - now % 86400 + h * 3600 + m * 60
    return t + 86400 if t < now - 12 * 3600 else t


def _order(row: dict) -> tuple:
    return tuple(str(row[k]) for k in Run.__dataclass_fields__)


if __name__ == "__main__":
    main()
