"""Reproduces AdaptFormer's claims on the embedded backbone: methods, ablations, plots.

    python -m benchmarks.transfer            # the committed study (3 seeds; about 70 min on 2 CPU cores)
    python -m benchmarks.transfer --quick    # pipeline smoke run (about a minute): checks the code, not the claims

Writes docs/benchmarks/transfer.{json,md} and transfer_{tradeoff,ablations}.svg (``transfer_quick.*`` in quick
mode). Each finished run is appended to a log (``--log``); a rerun after an interruption reuses those rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from benchmarks.transfer.claims import Results, check_claims, parameter_counts
from benchmarks.transfer.plan import BUDGETS, Run, phase_one, phase_two
from benchmarks.transfer.report import write_outputs
from benchmarks.transfer.runner import execute


def _commit() -> str:
    """HEAD's short hash, with ``+changes`` when the study's own code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "benchmarks/transfer", "adapters"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, 1 seed, small grids (a smoke test)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="where the report goes")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="training processes (one thread each when there are as many cores)")  # fmt: skip
    p.add_argument("--log", type=Path, default=None,
                   help="append each finished run here and reuse the rows it holds (default: <out>/.transfer_<budget>.jsonl)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="ignore the log's rows (start over)")
    p.add_argument("--render", action="store_true",
                   help="train nothing: rewrite the report and plots from the JSON already in --out")  # fmt: skip
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    budget = BUDGETS["quick" if args.quick else "full"]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        return _render(budget, args.out)
    log = args.log or args.out / f".transfer_{budget.name}.jsonl"
    if args.fresh and log.exists():
        log.unlink()
    started, commit = time.time(), _commit()  # the code that ran, not what was committed while it ran
    rows, reused = execute(
        budget, phase_one(budget), lambda rows: phase_two(budget, _best_tokens(rows, budget)), workers=args.workers,
        log=log,
    )  # fmt: skip
    res = Results(rows, budget)
    params = parameter_counts()
    claims = check_claims(res, params)
    meta = {
        "command": "python -m benchmarks.transfer" + (" --quick" if args.quick else ""),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.workers} worker processes, "
        f"{platform.python_version()}",
        "wall_seconds": round(time.time() - started),
        "runs": len(rows),
        "reused": reused,
        "budget": budget.name,
        "recipe": budget.describe(),
    }
    write_outputs(res, claims, sorted(rows, key=_order), meta,
                  params, args.out)  # fmt: skip
    for c in claims:
        print(f"claim {c.id:2d}: {c.verdict:13s} {c.claim}")


def _render(budget, out: Path) -> None:
    """The report and plots of an earlier invocation, from its JSON (its command, commit and wall time kept)."""
    path = out / ("transfer.json" if budget.name == "full" else f"transfer_{budget.name}.json")
    if not path.exists():
        raise SystemExit(f"--render: {path} does not exist; run the study first")
    doc = json.loads(path.read_text())
    res = Results(doc["runs"], budget)
    write_outputs(res, check_claims(res, doc["parameters"]), doc["runs"], doc["meta"], doc["parameters"], out)


def _order(row: dict) -> tuple:
    """Task, method, frames, then every other knob and the seed: one order whatever order the runs ended in."""
    first = ("task", "method", "frames")
    return tuple(row[k] for k in first) + tuple(row[k] for k in Run.__dataclass_fields__ if k not in first)


def _best_tokens(rows: dict[str, dict], budget) -> int:
    return Results(list(rows.values()), budget).best_vpt_tokens()


if __name__ == "__main__":
    main()
