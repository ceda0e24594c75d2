"""The study's statistics: a paired bootstrap over seeds and test items, and one verdict rule for every claim.

A claim is a statement about a difference D of top-1 accuracy (A minus B) against one tolerance TOL:

- ``better``: D > +TOL (A beats B by more than the tolerance)
- ``worse``: D < -TOL
- ``not_worse``: D >= -TOL (A at least matches B)
- ``no_better``: D <= +TOL (B's extra capacity buys no more than the tolerance)
- ``equal``: |D| <= TOL

The verdict is ``holds`` when the whole confidence interval of D lies on the claim's side of its boundary,
``fails`` when it lies wholly on the other side, and ``inconclusive`` when it straddles a boundary.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FAILS",
    "HOLDS",
    "INCONCLUSIVE",
    "KINDS",
    "TOL",
    "Diff",
    "combine",
    "decode_bits",
    "encode_bits",
    "paired_bootstrap",
    "verdict",
]

TOL = 0.01  # one point of top-1, for every claim
LEVEL = 0.95
N_BOOT = 4000
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
KINDS = {
    "better": "D > +tol",
    "worse": "D < -tol",
    "not_worse": "D >= -tol",
    "no_better": "D <= +tol",
    "equal": "|D| <= tol",
}


def encode_bits(correct) -> str:
    """Per-item correctness (booleans) as base64 of the packed bits (the item count is stored beside it)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def decode_bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int | None = None, level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """Mean difference of accuracy (a - b) and its percentile interval.

    ``a`` and ``b`` are ``[seeds, items]`` correctness matrices on the same test items, row i of both trained
    with seed i. Each resample draws seeds and items with replacement, the same ones for both methods, so the
    interval holds both the training noise (seeds) and the sampling noise of the test set (items).
    """
    n_boot = n_boot or N_BOOT
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must be [seeds, items] of one shape, got {a.shape} and {b.shape}")
    s, n = a.shape
    d = a - b
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    for i in range(0, n_boot, chunk):
        k = min(chunk, n_boot - i)
        seeds = rng.multinomial(s, np.full(s, 1.0 / s), size=k) / s  # [k, s]: weight of each seed
        per_item = seeds @ d  # [k, n]: each item's difference averaged over the drawn seeds
        items = rng.integers(0, n, size=(k, n))
        out[i : i + k] = np.take_along_axis(per_item, items, axis=1).mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(out, [alpha, 1 - alpha])
    return float(d.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float, kind: str, tol: float = TOL) -> str:
    """The rule of the module docstring, for an interval [lo, hi] of D."""
    if kind == "better":
        return HOLDS if lo > tol else FAILS if hi <= tol else INCONCLUSIVE
    if kind == "worse":
        return verdict(-hi, -lo, "better", tol)
    if kind == "not_worse":
        return HOLDS if lo >= -tol else FAILS if hi < -tol else INCONCLUSIVE
    if kind == "no_better":
        return verdict(-hi, -lo, "not_worse", tol)
    if kind == "equal":
        if -tol <= lo and hi <= tol:
            return HOLDS
        return FAILS if lo > tol or hi < -tol else INCONCLUSIVE
    raise ValueError(f"unknown claim kind {kind!r}; one of {', '.join(KINDS)}")


def combine(verdicts: list[str]) -> str:
    """A claim made of parts (e.g. "on every task"): fails if one part fails, holds if every part holds."""
    if not verdicts:
        return INCONCLUSIVE
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


@dataclass(frozen=True)
class Diff:
    """One compared pair: what, the difference with its interval, the kind of statement, the verdict."""

    label: str
    a: str
    b: str
    mean: float
    lo: float
    hi: float
    kind: str
    verdict: str
    counts: bool = True  # False: shown beside the claim (a control task, another recipe) but not in its verdict

    def interval(self) -> str:
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"
