"""Statistics over per-question results: bootstrap intervals and paired comparisons.

Owns: the 95 % bootstrap interval of a mean over questions (`mean_interval`, scipy.stats.bootstrap,
seeded), the paired comparison of a method with a reference on the same questions
(`paired_comparison`: the mean difference with its paired bootstrap interval, and the exact
McNemar test on the discordant pairs through scipy.stats.binomtest), and their result values.
Must not: read files, know methods, studies or models.

Conventions: intervals are two-sided percentile-style bounds at `confidence` (0.95); the
bootstrap method is BCa (bias-corrected and accelerated), falling back to the percentile method
where BCa is undefined (scipy then returns NaN: a sample with almost no spread); a sample whose
values are all equal has the exact interval (value, value). Every random draw comes from
`numpy.random.default_rng(seed)`, so a result is a pure function of its inputs and the seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

from neurorit.errors import ConfigError, DataError

CONFIDENCE = 0.95
N_RESAMPLES = 2000  # enough for a stable 95 % interval; 9999 (scipy's default) costs 5x for the same 2 digits
METHODS = ("BCa", "percentile", "basic")


def _sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size == 0:
        raise DataError(f"{name} is empty; expected at least one per-question value to summarise.")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite value(s); expected finite numbers.")
    return array


def _check(confidence: float, n_resamples: int, method: str) -> None:
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ConfigError.field("stats", "confidence", confidence, "a number in (0, 1), e.g. 0.95")
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 100:
        raise ConfigError.field("stats", "n_resamples", n_resamples, "an integer >= 100")
    if method not in METHODS:
        raise ConfigError.field("stats", "method", method, f"one of {list(METHODS)}")


@dataclass(frozen=True)
class Interval:
    """A mean over n questions with its bootstrap interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """A method against a reference on the same n questions.

    difference: mean(method) - mean(reference) with its paired bootstrap interval. For binary
    outcomes (correct / wrong): better = questions only the method got right, worse = only the
    reference got right, and p_mcnemar = the exact two-sided McNemar p (binomial test of `better`
    out of better + worse at 1/2); 1.0 when there is no discordant pair. NaN for non-binary values.
    """

    difference: float
    low: float
    high: float
    n: int
    better: int
    worse: int
    p_mcnemar: float
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interval(data: tuple[np.ndarray, ...], statistic: Any, *, paired: bool, confidence: float,
              n_resamples: int, method: str, seed: int) -> tuple[float, float]:
    """scipy.stats.bootstrap's interval; BCa falls back to percentile where it is undefined."""
    for how in dict.fromkeys((method, "percentile")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled below by the fallback
            result = sps.bootstrap(data, statistic, paired=paired, vectorized=True, confidence_level=confidence,
                                   n_resamples=n_resamples, method=how, rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    raise AssertionError("the percentile bootstrap of a finite sample is finite")  # unreachable


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def mean_interval(
    values: Sequence[float] | np.ndarray, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
    method: str = "BCa", seed: int = 0,
) -> Interval:
    """The mean of per-question values (1/0 for accuracy, EM; token F1) with its bootstrap interval.

    A single question, or questions that all score the same, give the exact interval (mean, mean).
    """
    _check(confidence, n_resamples, method)
    x = _sample(values, "values")
    if np.all(x == x[0]):  # exact, without the rounding of a float sum
        return Interval(float(x[0]), float(x[0]), float(x[0]), int(x.size), confidence)
    mean = float(x.mean())
    low, high = _interval((x,), _mean, paired=False, confidence=confidence, n_resamples=n_resamples,
                          method=method, seed=seed)
    return Interval(mean, low, high, int(x.size), confidence)


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0.0) | (x == 1.0)))


def mcnemar_exact(better: int, worse: int) -> float:
    """Exact two-sided McNemar p: binomtest(better, better + worse, 1/2); 1.0 with no discordant pair."""
    for name, value in (("better", better), ("worse", worse)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ConfigError.field("mcnemar_exact", name, value, "an integer >= 0 (a count of questions)")
    n = int(better) + int(worse)
    if n == 0:
        return 1.0
    return float(sps.binomtest(int(better), n, 0.5, alternative="two-sided").pvalue)


def paired_comparison(
    method_values: Sequence[float] | np.ndarray, reference_values: Sequence[float] | np.ndarray, *,
    confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, method: str = "BCa", seed: int = 0,
) -> PairedComparison:
    """method - reference on the same questions (same order): paired bootstrap and exact McNemar.

    Refuses inputs of different lengths: the pairs must be the same questions.
    """
    _check(confidence, n_resamples, method)
    x = _sample(method_values, "method_values")
    y = _sample(reference_values, "reference_values")
    if x.shape != y.shape:
        raise DataError(
            f"paired comparison needs the same questions on both sides; got {x.size} method values and {y.size} "
            "reference values. Fix: compare results of the same test questions (same dataset, noise and seed)."
        )
    diff = x - y
    mean = float(diff.mean())
    if np.all(diff == diff[0]):
        low = high = mean
    else:
        low, high = _interval((x, y), _mean_difference, paired=True, confidence=confidence,
                              n_resamples=n_resamples, method=method, seed=seed)
    if _is_binary(x) and _is_binary(y):
        better = int(np.sum((x == 1.0) & (y == 0.0)))
        worse = int(np.sum((x == 0.0) & (y == 1.0)))
        p = mcnemar_exact(better, worse)
    else:
        better = int(np.sum(x > y))
        worse = int(np.sum(x < y))
        p = math.nan
    return PairedComparison(mean, low, high, int(x.size), better, worse, p, confidence)
