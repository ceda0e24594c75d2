"""Runs the study's training runs on a pool of worker processes, one thread each, with a resumable log.

Each run trains on the fit part of a task's training images, picks nothing itself (the lr search compares the
validation top-1 of several runs), and is then scored on the untouched test split: top-1, the correctness of
every test item (for the paired bootstrap), and for the main settings a k-NN accuracy and the silhouette of its
features.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from benchmarks.transfer.plan import Budget, Run, Setting, main_settings
from benchmarks.transfer.stats import encode_bits

__all__ = ["BackboneChoice", "execute", "run_one"]

_DATA: dict[tuple, object] = {}
VAL_FRACTION = {"digits": 0.5}  # digits has 1,797 images: half of them are the test split
KNN_K = 10
TSNE_POINTS = 400


@dataclass(frozen=True)
class BackboneChoice:
    """The backbone the study runs on: ``embedded`` or a timm ViT name, and optional local weights."""

    name: str = "embedded"
    weights: str | None = None

    def load(self):
        from adaptformer.backbone import load_backbone

        return load_backbone(self.name, self.weights)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def task_splits(budget: Budget, task: str, spec):
    """``(fit, val, test, labels)`` of a task: a class-balanced, seed-0 choice of ``budget.train`` training
    images, the first ``budget.val`` of them the validation split; at most ``budget.test`` test images."""
    import numpy as np

    from adaptformer.data import LabeledData, load_data
    from adaptformer.data._util import take

    splits = load_data(task, spec, seed=0, val_fraction=VAL_FRACTION.get(task, 0.2),
                       limit=max(budget.train, budget.test), progress=False)  # fmt: skip
    rng = np.random.default_rng(0)
    pick = take(splits.train.y.numpy(), budget.train, rng)  # balanced order: any prefix is balanced too
    val_idx, fit_idx = pick[: budget.val], pick[budget.val :]
    test_idx = np.sort(take(splits.val.y.numpy(), budget.test, rng))

    def part(data, idx):
        return LabeledData(data.x[idx], data.y[idx])

    return part(splits.train, fit_idx), part(splits.train, val_idx), part(splits.val, test_idx), splits.labels


def _splits(budget: Budget, task: str, backbone: BackboneChoice):
    key = (budget.name, task, backbone)
    if key not in _DATA:
        spec = backbone.load().spec
        if spec.size > 64:
            _DATA.clear()  # one task at a time for large inputs; the small ones all stay
        _DATA[key] = task_splits(budget, task, spec)
    return _DATA[key]


def bn_head(model) -> None:
    """The released code's head: a BatchNorm without affine parameters before the linear classifier."""
    from torch import nn

    from adaptformer.model import base_vit

    vit = base_vit(model)
    vit.head = nn.Sequential(nn.BatchNorm1d(vit.embed_dim, affine=False, eps=1e-6), vit.head)


def is_main(budget: Budget, run: Run) -> bool:
    return run.setting in main_settings(budget, run.task).values()


def _scores(model, data, batch_size: int = 256):
    """Logits and pooled features (what the head sees) of every sample, in one pass."""
    import torch

    from adaptformer.model import base_vit

    vit = base_vit(model)
    model.eval()
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(data.y), batch_size):
            f = vit.forward_head(model.forward_features(data.x[i : i + batch_size]), pre_logits=True)
            feats.append(f.float())
            logits.append(vit.head(f).float())
    return torch.cat(logits), torch.cat(feats)


def knn_correct(ref, ref_y, query, query_y, k: int = KNN_K):
    """Per query: whether the majority label of its ``k`` nearest references (cosine) is its label."""
    import torch.nn.functional as F

    sims = F.normalize(query, dim=1) @ F.normalize(ref, dim=1).T
    nearest = sims.topk(min(k, len(ref_y)), dim=1).indices
    votes = F.one_hot(ref_y[nearest], int(max(ref_y.max(), query_y.max())) + 1).sum(1).float()
    votes += 1e-3 * F.one_hot(ref_y[nearest[:, 0]], votes.shape[1])  # ties go to the nearest neighbour
    return (votes.argmax(1) == query_y).numpy()


def run_one(budget: Budget, run: Run, backbone: BackboneChoice, sweep_task: str) -> dict:
    """Trains one run and returns its row."""
    import numpy as np

    from adaptformer.data import Splits
    from adaptformer.train import build_model, fit

    fit_data, val_data, test_data, labels = _splits(budget, run.task, backbone)
    cfg = run.train_config(budget)
    model = build_model(backbone.load(), cfg, len(labels))
    if run.arm == "sgd":
        bn_head(model)
    result = fit(model, Splits(fit_data, val_data, labels, "image", 1, run.task), cfg, progress=False)
    m = result.metrics
    logits, feats = _scores(result.model, test_data)
    correct = (logits.argmax(1) == test_data.y).numpy()
    row = {
        **asdict(run),
        "val_top1": m["val_top1"],
        "val_loss": m["val_loss"],
        "test_top1": round(float(correct.mean()), 5),
        "test_n": len(correct),
        "test_bits": encode_bits(correct),
        "fit_samples": m["train_samples"],
        "val_samples": m["val_samples"],
        "trainable_params": m["trainable_params"],
        "seconds": round(result.seconds, 1),
    }
    if is_main(budget, run):
        from sklearn.metrics import silhouette_score

        _, ref = _scores(result.model, fit_data)
        knn = knn_correct(ref, fit_data.y, feats, test_data.y)
        row.update(knn_top1=round(float(knn.mean()), 5), knn_bits=encode_bits(knn),
                   silhouette=round(float(silhouette_score(feats.numpy(), test_data.y.numpy(), metric="cosine")), 5))  # fmt: skip
        if run.task == sweep_task and run.seed == 0 and run.method != "full":
            n = min(TSNE_POINTS, len(test_data.y))
            if n >= 100:
                from sklearn.manifold import TSNE

                xy = TSNE(2, init="pca", perplexity=30, random_state=0).fit_transform(feats[:n].numpy())
            else:  # a smoke run's few points: a projection on the two main axes is enough, and quick
                from sklearn.decomposition import PCA

                xy = PCA(2).fit_transform(feats[:n].numpy())
            xy = (xy - xy.min(0)) / np.maximum(xy.max(0) - xy.min(0), 1e-9)
            row.update(tsne=np.round(xy, 3).tolist(), tsne_labels=test_data.y[:n].tolist())
    return row


def _load_log(path: Path | None, tag: str) -> dict[str, dict]:
    if path is None or not path.exists():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interruption
        if rec.get("budget") == tag:
            done[rec["key"]] = rec["row"]
    return done


def execute(
    budget: Budget,
    first: list[Run],
    then: Callable[[dict[str, dict]], Iterable[Run]],
    order: Callable[[Run], tuple],
    *,
    workers: int,
    backbone: BackboneChoice,
    sweep_task: str,
    log: Path | None = None,
    until: float | None = None,
) -> tuple[list[dict], int]:
    """Runs ``first`` and, as results come in, whatever ``then(rows_so_far)`` adds, lowest ``order`` first.

    Rows already in ``log`` (same budget and backbone) are reused, so an interrupted study resumes where it
    stopped. No run starts after the epoch time ``until`` (those under way finish). Returns the rows and how
    many of them came from the log.
    """
    tag = f"{budget.name}:{budget.epochs}ep:{budget.train}:{backbone.name}"
    done = _load_log(log, tag)
    rows: dict[str, dict] = {}
    reused = 0
    queue: dict[str, Run] = {}

    def add(runs: Iterable[Run]) -> None:
        nonlocal reused
        for run in runs:
            if run.key in rows or run.key in queue:
                continue
            if run.key in done:
                rows[run.key] = done[run.key]
                reused += 1
                continue
            queue[run.key] = run

    # Reused rows may unlock follow-ups, which may be reused too: repeat until nothing changes.
    add(first)
    while True:
        before = len(rows) + len(queue)
        add(then(dict(rows)))
        if len(rows) + len(queue) == before:
            break
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(queue), desc=f"transfer study ({budget.name})", unit="run", dynamic_ncols=True)
    started = time.time()
    # One worker trains in this process (no start-up of a second interpreter: the quick test's case).
    pool_cm = _InProcess() if workers == 1 else ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,))  # fmt: skip
    with pool_cm as pool:
        pending: dict[Future, Run] = {}
        while (queue and (until is None or time.time() < until)) or pending:
            if until is not None and time.time() >= until:
                queue.clear()
            for run in sorted(queue.values(), key=order)[: max(0, workers - len(pending))]:
                del queue[run.key]
                pending[pool.submit(run_one, budget, run, backbone, sweep_task)] = run
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                run = pending.pop(fut)
                row = fut.result()
                rows[run.key] = row
                if log is not None:
                    with log.open("a") as f:
                        f.write(json.dumps({"budget": tag, "key": run.key, "row": row}) + "\n")
                new = len(queue)
                add(r for r in then(dict(rows)) if not any(r.key == p.key for p in pending.values()))
                bar.total += len(queue) - new
                bar.update(1)
                bar.set_postfix_str(f"{time.time() - started:.0f} s", refresh=True)
                tqdm.write(
                    f"{run.task:14s} {run.arm:5s} {run.method:11s} d={run.bottleneck:<3d} s={run.scale:<4g} "
                    f"L={run.layers or 'all'} {run.mode[:3]} {run.adapter_input:3s} p={run.prompt_tokens:<2d} "
                    f"lr={run.lr:<6g} seed {run.seed}: val {row['val_top1']:.4f} test {row['test_top1']:.4f} "
                    f"({row['seconds']:.0f} s)"
                )
    bar.close()
    return list(rows.values()), reused


class _InProcess:
    """The part of an executor :func:`execute` uses, running each job when it is submitted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:  # handed to the caller through the future, as a pool would
            fut.set_exception(e)
        return fut


def setting_of(row: dict) -> Setting:
    return Setting(**{k: row[k] for k in Setting.__dataclass_fields__})
