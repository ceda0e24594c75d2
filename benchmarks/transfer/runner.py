"""Runs the study's training runs on a pool of worker processes, one thread each, with a resumable log."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from benchmarks.transfer.plan import Budget, Run

__all__ = ["execute", "run_one"]

_DATA: dict[tuple, object] = {}


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _splits(budget: Budget, task: str, frames: int):
    from adaptformer.backbone import load_backbone
    from adaptformer.data import load_data

    key = (budget.name, task, frames)
    if key not in _DATA:
        caps = (budget.train_limit[task], budget.val_limit[task])
        limit = None if None in caps else max(caps)  # the loader's limit caps both splits (stratified)
        splits = load_data(task, load_backbone().spec, frames=frames if task == "motion" else None, seed=0,
                           limit=limit, progress=False)  # fmt: skip
        _DATA.clear()  # one data set per worker at a time: clips are large
        _DATA[key] = _cap(splits, *caps)
    return _DATA[key]


def _cap(splits, n_train: int | None, n_val: int | None):
    """A random subset (fixed seed) of ``n`` samples of each split that is larger than ``n``."""
    from dataclasses import replace

    import torch

    def subset(data, n):
        if n is None or len(data.y) <= n:
            return data
        keep = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(0))[:n].sort().values
        return replace(data, x=data.x[keep], y=data.y[keep])

    return replace(splits, train=subset(splits.train, n_train), val=subset(splits.val, n_val))


def run_one(budget: Budget, run: Run) -> dict:
    """Trains one run and returns its row (accuracy, parameter counts, seconds)."""
    from adaptformer.backbone import load_backbone
    from adaptformer.train import build_model, fit

    splits = _splits(budget, run.task, run.frames)
    cfg = run.train_config(budget)
    model = build_model(load_backbone(), cfg, len(splits.labels), frames=splits.frames)
    result = fit(model, splits, cfg, progress=False)
    m = result.metrics
    return {
        **asdict(run),
        "val_top1": m["val_top1"],
        "val_loss": m["val_loss"],
        "train_samples": m["train_samples"],
        "val_samples": m["val_samples"],
        "trainable_params": m["trainable_params"],
        "percent_of_backbone": m["percent_of_backbone"],
        "seconds": round(result.seconds, 1),
    }


def _load_log(path: Path | None, budget: Budget) -> dict[str, dict]:
    if path is None or not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if rec.get("budget") == budget.name:
            done[rec["key"]] = rec["row"]
    return done


def execute(
    budget: Budget,
    first: list[Run],
    then: Callable[[dict[str, dict]], Iterable[Run]],
    *,
    workers: int,
    log: Path | None = None,
) -> tuple[list[dict], int]:
    """Runs ``first``, then the runs ``then(rows_so_far)`` returns once every run of ``first`` ended.

    Rows already in ``log`` (same budget) are reused, so an interrupted study resumes where it stopped. Returns
    the rows and how many of them came from the log.
    """
    done = _load_log(log, budget)
    reused = 0
    rows: dict[str, dict] = {}
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(first), desc=f"transfer study ({budget.name})", unit="run", dynamic_ncols=True)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        pending: dict[Future, Run] = {}

        def submit(runs: Iterable[Run]) -> None:
            nonlocal reused
            for run in runs:
                if run.key in rows or any(r.key == run.key for r in pending.values()):
                    continue
                if run.key in done:
                    rows[run.key] = done[run.key]
                    reused += 1
                    bar.update(1)
                    continue
                pending[pool.submit(run_one, budget, run)] = run

        submit(first)
        # Phase two waits on the VPT sweep only (it needs VPT's best token count).
        prerequisites = {r.key for r in first if r.method == "vpt"}
        second_submitted = False
        started = time.time()
        while True:
            if not second_submitted and prerequisites <= rows.keys():
                second = [r for r in then(dict(rows)) if r.key not in rows]
                bar.total += len({r.key for r in second} - {r.key for r in pending.values()})
                bar.refresh()
                submit(second)
                second_submitted = True
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = pending.pop(fut)
                row = fut.result()
                rows[run.key] = row
                if log is not None:
                    with log.open("a") as f:
                        f.write(json.dumps({"budget": budget.name, "key": run.key, "row": row}) + "\n")
                bar.update(1)
                bar.set_postfix_str(f"{time.time() - started:.0f} s", refresh=True)
                tqdm.write(
                    f"{run.task:7s} {run.method:11s} f={run.frames} d={run.bottleneck:<3d} s={run.scale:<5g} "
                    f"L={run.layers or 'all'} {run.mode[:3]} {run.adapter_input:3s} p={run.prompt_tokens:<2d} "
                    f"seed {run.seed}: top-1 {row['val_top1']:.4f} ({row['seconds']:.0f} s)"
                )
    bar.close()
    return list(rows.values()), reused
