"""Helpers shared by the data sources: argument checks, seeded stratified selection, tensor filling."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from adaptformer.errors import DataError
from adaptformer.preprocess import InputSpec

# A progress bar appears only when loading has taken longer than this many seconds.
PROGRESS_DELAY_S = 2.0


def clip_spec(spec: InputSpec, frames: int) -> InputSpec:
    """The spec for clips of ``frames`` frames (tubelet 1: preprocessing does not depend on it)."""
    return InputSpec(spec.size, spec.mean, spec.std, spec.interpolation, "clip", frames, 1)


def image_source_frames(name: str, frames: int | None) -> None:
    if frames not in (None, 1):
        raise DataError(f"{name} holds still images; frames={frames} applies to clip data only (leave it unset)")


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation of ``range(len(y))`` in which the classes take turns.

    Any prefix of it is as balanced as the classes allow, so ``order[:n]`` is a stratified sample of ``n``.
    """
    y = np.asarray(y)
    perm = rng.permutation(len(y))
    ys = y[perm]
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(ys):
        where = np.flatnonzero(ys == c)
        rank[where] = np.arange(len(where))
    # Within one round, classes come in a seeded random order too.
    class_key = rng.permutation(int(ys.max()) + 1 if len(ys) else 0)
    keys = rank * (len(class_key) + 1) + class_key[ys] if len(ys) else rank
    return perm[np.argsort(keys, kind="stable")]


def take(y: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded, stratified selection of at most ``limit`` samples (all of them when None)."""
    order = stratified_order(y, rng)
    return order if limit is None else order[:limit]


def split_stratified(y: np.ndarray, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices per class: ``round(n_c * val_fraction)`` of each class go to validation.

    A class with at least two samples keeps at least one on each side; a class with one sample trains.
    """
    y = np.asarray(y)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * val_fraction)
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.concatenate(train), np.concatenate(val)


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), else the physical total; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def check_memory(name: str, n: int, frames: int, size: int) -> None:
    """Refuses, before any work, a data set whose float32 tensors would take more than half the available memory."""
    need = n * max(frames, 1) * 3 * size * size * 4
    available = _available_memory()
    if available is not None and need > available / 2:
        shape = f"{frames}x3x{size}x{size}" if frames > 1 else f"3x{size}x{size}"
        raise DataError(
            f"{name}: {n:,} samples of {shape} float32 need {need / 2**30:.1f} GiB, more than half of the "
            f"{available / 2**30:.1f} GiB of memory available; pass a smaller limit "
            f"(e.g. limit={max(1, n * available // (8 * need))}) or use a smaller input size"
        )


def fill(
    items: Sequence[Any] | np.ndarray,
    make: Callable[[Any], torch.Tensor],
    shape: tuple[int, ...],
    desc: str,
    progress: bool,
) -> torch.Tensor:
    """Stacks ``make(item)`` for every item into a preallocated float32 tensor of ``(len(items), *shape)``.

    A tqdm bar shows on stderr when this takes longer than :data:`PROGRESS_DELAY_S` (never if not ``progress``).
    """
    from tqdm.auto import tqdm

    out = torch.empty((len(items), *shape), dtype=torch.float32)
    for i, item in enumerate(
        tqdm(
            items, desc=desc, unit="sample", delay=PROGRESS_DELAY_S, mininterval=1.0, disable=not progress, leave=False
        )
    ):
        out[i] = make(item)
    return out


def labels_tensor(y: Sequence[int] | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y, dtype=np.int64))
