"""Statistics for small samples of paired results: every method sees the same inputs, so two
methods are compared input by input, with exact tests and intervals that stay honest at 2-20 pairs.

* :func:`wilson`: the Wilson score interval of one proportion (accuracy at one length).
* :func:`mcnemar_exact`: McNemar's exact test for paired 0/1 outcomes (the binomial test on the
  discordant pairs) and :func:`paired_proportion_ci`, Newcombe's hybrid score interval for the
  difference of two paired proportions (Newcombe 1998, method 10).
* :func:`sign_flip_test`: the exact paired permutation test for a mean difference (every one of
  the 2^n sign assignments when n <= 20, else a seeded Monte Carlo of 2^20 of them), and
  :func:`paired_t_ci`, the t interval of the mean difference.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
EXACT_SIGN_FLIPS_MAX_N = 20  # 2^20 assignments enumerated at most
_SIGN_FLIP_DRAWS = 2**20


def wilson(successes, n, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) of a binomial proportion, elementwise."""
    k, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value of McNemar's exact test: of the n = b + c discordant pairs, ``only_first``
    (b) went the first method's way; under no difference b ~ Binomial(n, 1/2). 1.0 when n = 0."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    return float(stats.binomtest(only_first, n, 0.5).pvalue)


def paired_proportion_ci(both: int, only_first: int, only_second: int, neither: int,
                         z: float = Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2, the difference of two paired proportions
    (p1 = first method's success rate, p2 = the second's, over the same n inputs)."""
    n = both + only_first + only_second + neither
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1,), (u1,) = wilson([both + only_first], [n], z)
    (l2,), (u2,) = wilson([both + only_second], [n], z)
    denominator = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(denominator) if denominator else 0.0
    delta = p1 - p2
    low = delta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = delta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def sign_flip_test(differences, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test of mean(differences) = 0: the
    share of sign assignments whose |mean| is at least the observed one. Exact for n <= 20."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, np.abs(d).max())
    if n <= EXACT_SIGN_FLIPS_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(_SIGN_FLIP_DRAWS, n))
    means = np.abs(signs @ d) / n
    return float(np.mean(means >= observed - tolerance))


def paired_t_ci(differences) -> tuple[float, float]:
    """The 95% t interval of the mean of paired differences (NaN with fewer than 2 pairs)."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)
