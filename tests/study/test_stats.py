"""The study's statistics on made-up numbers whose answer is known: bootstrap intervals and the verdict rule."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.transfer.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    TOL,
    combine,
    decode_bits,
    encode_bits,
    paired_bootstrap,
    verdict,
)


def test_bits_round_trip():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 2000):
        bits = rng.random(n) < 0.5
        assert (decode_bits(encode_bits(bits), n) == bits).all()


def test_equal_results_give_a_zero_interval():
    a = np.random.default_rng(1).random((5, 500)) < 0.7
    assert paired_bootstrap(a, a.copy()) == (0.0, 0.0, 0.0)


def test_one_always_right_the_other_always_wrong():
    mean, lo, hi = paired_bootstrap(np.ones((5, 100), bool), np.zeros((5, 100), bool))
    assert mean == lo == hi == 1.0


def test_interval_of_a_known_paired_difference():
    """A is right on 200 of 2,000 items where B is wrong, equal elsewhere, in every seed: D = 0.1 with the
    binomial standard error sqrt(0.1 * 0.9 / 2000) = 0.0067, so the 95% interval is about 0.1 ± 0.013."""
    a = np.zeros((5, 2000), bool)
    b = np.zeros((5, 2000), bool)
    a[:, :1200] = True
    b[:, :1000] = True
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.1)
    assert lo == pytest.approx(0.1 - 1.96 * 0.0067, abs=0.003)
    assert hi == pytest.approx(0.1 + 1.96 * 0.0067, abs=0.003)


def test_seed_noise_widens_the_interval():
    """The same mean difference, but the seeds disagree (0.0 to 0.2): the interval must take that in."""
    n = 2000
    a = np.zeros((5, n), bool)
    b = np.zeros((5, n), bool)
    b[:, : n // 2] = True
    for s, extra in enumerate((0.0, 0.05, 0.1, 0.15, 0.2)):
        a[s, : n // 2 + int(extra * n)] = True
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.1)
    assert hi - lo > 0.08  # items alone would give about 0.026
    assert lo < 0.1 < hi


def test_pairing_by_item_removes_the_item_difficulty():
    """Two methods right on nearly the same items: the unpaired spread of each accuracy (about 0.02) does not
    reach the interval of their difference (0.01 exactly, on every resample of items: pairing)."""
    rng = np.random.default_rng(2)
    easy = rng.random(2000) < 0.6
    a = np.tile(easy, (5, 1))
    b = a.copy()
    b[:, np.flatnonzero(easy)[:20]] = False
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.01)
    assert hi - lo < 0.01


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones((5, 10)), np.ones((4, 10)))


@pytest.mark.parametrize(
    ("lo", "hi", "kind", "expected"),
    [
        (0.03, 0.08, "better", HOLDS),
        (-0.02, 0.005, "better", FAILS),  # within the tolerance: not a win
        (0.0, 0.03, "better", INCONCLUSIVE),  # straddles +tol
        (-0.08, -0.03, "worse", HOLDS),
        (-0.005, 0.04, "worse", FAILS),
        (-0.03, 0.0, "worse", INCONCLUSIVE),
        (-0.005, 0.02, "not_worse", HOLDS),
        (-0.05, -0.02, "not_worse", FAILS),
        (-0.03, 0.01, "not_worse", INCONCLUSIVE),
        (-0.02, 0.005, "no_better", HOLDS),
        (0.02, 0.05, "no_better", FAILS),
        (-0.01, 0.03, "no_better", INCONCLUSIVE),
        (-0.008, 0.009, "equal", HOLDS),
        (0.015, 0.04, "equal", FAILS),
        (-0.04, -0.012, "equal", FAILS),
        (-0.005, 0.02, "equal", INCONCLUSIVE),
    ],
)
def test_one_rule_for_every_kind(lo, hi, kind, expected):
    assert TOL == 0.01
    assert verdict(lo, hi, kind) == expected


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        verdict(0, 1, "beats")


def test_combining_parts():
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, INCONCLUSIVE, FAILS]) == FAILS
    assert combine([]) == INCONCLUSIVE


@pytest.mark.parametrize(
    ("gap", "items", "kind", "expected"),
    [
        (0.05, 2000, "better", HOLDS),  # a clear win on a large test set
        (0.0, 2000, "better", FAILS),  # no win at all
        (0.0, 2000, "equal", HOLDS),
        (0.01, 100, "better", INCONCLUSIVE),  # a small gap on few items cannot be told
        (-0.05, 2000, "not_worse", FAILS),
    ],
)
def test_made_up_studies_get_the_known_verdict(gap, items, kind, expected):
    """Two methods of 70% accuracy, A ahead by ``gap`` on distinct items, seeds differing by item noise."""
    rng = np.random.default_rng(3)
    base = rng.random((5, items)) < 0.7
    a, b = base.copy(), base.copy()
    k = round(abs(gap) * items)
    for s in range(5):  # A turns k of B's errors right (or k of its hits wrong) in every seed
        a[s, np.flatnonzero(base[s] != (gap > 0))[:k]] = gap > 0
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(gap, abs=0.005)
    assert verdict(lo, hi, kind) == expected
