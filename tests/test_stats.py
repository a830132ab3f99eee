"""neurorit.stats against textbook cases: exact McNemar p from the binomial distribution by hand,
intervals of constants, coverage of a known mean, degenerate pairs, and clear refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurorit.errors import ConfigError, DataError
from neurorit.stats import mcnemar_exact, mean_interval, paired_comparison


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2 by hand: twice the smaller tail, capped at 1."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("better, worse", [(1, 9), (9, 1), (0, 6), (3, 3), (2, 8), (10, 25)])
def test_mcnemar_exact_equals_the_binomial_by_hand(better: int, worse: int) -> None:
    assert mcnemar_exact(better, worse) == pytest.approx(_binom_two_sided(better, better + worse), rel=1e-12)


def test_mcnemar_known_value_1_of_10() -> None:
    # 1 of 10 discordant pairs: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024, rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_counts_discordant_pairs_and_uses_mcnemar() -> None:
    method = [1, 1, 1, 0, 0, 1, 1, 0, 1, 1]
    ref = [0, 0, 1, 0, 1, 0, 0, 0, 0, 1]
    result = paired_comparison(method, ref, seed=3)
    assert (result.better, result.worse, result.n) == (5, 1, 10)
    assert result.p_mcnemar == pytest.approx(_binom_two_sided(1, 6), rel=1e-12)  # 14/64
    assert result.difference == pytest.approx(0.4)
    assert result.low <= result.difference <= result.high


def test_all_equal_pairs_give_p_one_and_a_zero_interval() -> None:
    values = [1, 0, 1, 1, 0]
    result = paired_comparison(values, values)
    assert result.p_mcnemar == 1.0
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert (result.better, result.worse) == (0, 0)


def test_interval_of_a_constant_is_the_constant() -> None:
    for value in (0.0, 1.0, 0.37):
        interval = mean_interval([value] * 25)
        assert (interval.mean, interval.low, interval.high, interval.n) == (value, value, value, 25)


def test_interval_covers_the_known_mean_of_a_large_sample() -> None:
    rng = np.random.default_rng(0)
    sample = rng.binomial(1, 0.3, size=4000)  # true mean 0.3; standard error ~0.0072
    interval = mean_interval(sample, seed=1)
    assert interval.low < 0.3 < interval.high
    assert interval.low < interval.mean < interval.high
    assert 0.02 < interval.high - interval.low < 0.04  # ~ 2 x 1.96 x 0.0072 = 0.028


def test_interval_is_seeded_and_reproducible() -> None:
    values = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1]
    assert mean_interval(values, seed=7) == mean_interval(values, seed=7)


def test_non_binary_values_have_no_mcnemar() -> None:
    result = paired_comparison([0.5, 1.0, 0.2], [0.0, 1.0, 0.4])
    assert math.isnan(result.p_mcnemar)
    assert (result.better, result.worse) == (1, 1)


def test_paired_bootstrap_interval_of_a_clear_gain_excludes_zero() -> None:
    rng = np.random.default_rng(5)
    ref = rng.binomial(1, 0.3, size=300)
    method = np.where(rng.random(300) < 0.3, 1, ref)  # the method flips ~30 % of questions to correct
    result = paired_comparison(method, ref, seed=0)
    assert result.low > 0
    assert result.worse == 0 and result.better > 0
    assert result.p_mcnemar < 1e-6


@pytest.mark.parametrize("call, match", [
    (lambda: mean_interval([]), "empty"),
    (lambda: paired_comparison([], []), "empty"),
    (lambda: paired_comparison([1, 0, 1], [1, 0]), "same questions"),
    (lambda: mean_interval([1.0, float("nan")]), "non-finite"),
])
def test_bad_inputs_are_refused_clearly(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=match):
        call()


def test_bad_knobs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="confidence"):
        mean_interval([1, 0], confidence=1.5)
    with pytest.raises(ConfigError, match="method"):
        mean_interval([1, 0], method="jackknife")
    with pytest.raises(ConfigError, match="worse"):
        mcnemar_exact(1, -2)
