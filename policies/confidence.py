"""Wilson score bounds for a proportion measured on n samples.

We report the ends of the *two-sided* interval at the given confidence, so the default
0.95 gives the familiar z = 1.96 and "lower 95% bound" means the lower end of the 95%
interval (a one-sided 95% bound would use z = 1.645 and be less conservative).
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist


def _z(confidence: float) -> float:
    """The normal quantile for a two-sided interval: 0.95 -> 1.95996..."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _wilson(mean: float, n: int, confidence: float) -> tuple[float, float]:
    if not 0.0 <= mean <= 1.0:
        raise ValueError(f"mean must be in [0, 1], got {mean!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    z = _z(confidence)
    if n == 0:
        return 0.0, 1.0  # no evidence: the whole range
    z2_n = z * z / n
    denominator = 1.0 + z2_n
    centre = (mean + z2_n / 2.0) / denominator
    half_width = z * math.sqrt(mean * (1.0 - mean) / n + z2_n / (4.0 * n)) / denominator
    # Clamp: float rounding can push the ends a hair outside [0, 1] at mean 0 or 1.
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def wilson_lower_bound(mean: float, n: int, confidence: float = 0.95) -> float:
    """Lower end of the two-sided Wilson score interval for a proportion `mean` seen on `n` samples.

    Returns 0.0 when n == 0. Raises ValueError for mean outside [0, 1], n < 0,
    or confidence outside (0, 1).
    """
    return _wilson(mean, n, confidence)[0]


def wilson_upper_bound(mean: float, n: int, confidence: float = 0.95) -> float:
    """Upper end of the two-sided Wilson score interval for a proportion `mean` seen on `n` samples.

    Returns 1.0 when n == 0. Raises ValueError like `wilson_lower_bound`.
    """
    return _wilson(mean, n, confidence)[1]


# Anytime-valid bounds: a confidence sequence, valid however many times the data is looked at.
#
# Calibration looks at a model's record after every slice and stops when it is decided, and it may
# go on to more labelled items when they are there. A fixed-n interval (Wilson above) read after
# every slice errs more often than its confidence says. The bounds below come from a mixture
# martingale (Robbins' method of mixtures, one-sided): for the lower bound at p, the likelihood
# ratio of every accuracy q > p against p, averaged over a uniform prior on q, is a nonnegative
# martingale under p, so by Ville's inequality it exceeds 1/alpha at ANY look with probability at
# most alpha. The lower bound is the smallest p it does not reject. One-sided: each end of the
# interval holds at `confidence` on its own (the pair together at 2 * confidence - 1).


def anytime_lower_bound(n: int, right: int, confidence: float = 0.95, *, bar: float | None = None) -> float:
    """The one-sided anytime-valid lower bound on an accuracy seen as `right` of `n` (0.0 for n = 0).

    `bar`, when given, centres the mixture on the accuracies that matter for proving it: a Beta prior
    on q of mean (1 + bar) / 2 and weight MIXTURE_WEIGHT. It must be fixed before the data is seen
    (the job's bar is); the bound stays valid for any bar, and is tighter near it."""
    if bar is None:
        return _anytime(n, right, confidence, 1.0, 1.0)
    centre = min(0.995, max(0.5, (1.0 + bar) / 2.0))
    return _anytime(n, right, confidence, centre * MIXTURE_WEIGHT, (1.0 - centre) * MIXTURE_WEIGHT)


def anytime_upper_bound(n: int, right: int, confidence: float = 0.95) -> float:
    """The one-sided anytime-valid upper bound (1.0 for n = 0): the lower bound of the misses, mirrored."""
    return 1.0 - _anytime(n, n - right, confidence, 1.0, 1.0)


# The weight, in items, of the mixture a bar centres: enough to put most of its mass within a few
# points of the accuracies that prove the bar, wide enough that a model far above it is still seen.
MIXTURE_WEIGHT = 50.0


@lru_cache(maxsize=200_000)
def _anytime(n: int, right: int, confidence: float, a: float, b: float) -> float:
    _check(n, right, confidence)
    if right == 0:
        return 0.0
    threshold = math.log(1.0 / (1.0 - confidence))
    lo, hi = 1e-12, (right / n if right < n else 1.0 - 1e-12)
    if _log_mixture(hi, n, right, a, b) >= threshold:
        return hi
    for _ in range(48):  # bisection to ~1e-14: far finer than any bar
        mid = (lo + hi) / 2.0
        if _log_mixture(mid, n, right, a, b) >= threshold:
            lo = mid
        else:
            hi = mid
    return lo


def _check(n: int, right: int, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n < 0 or not 0 <= right <= n:
        raise ValueError(f"need 0 <= right <= n, got right={right!r}, n={n!r}")


def _log_mixture(p: float, n: int, right: int, a: float, b: float) -> float:
    """log of the mixture of likelihood ratios (q / p)^right ((1 - q) / (1 - p))^(n - right) over q
    from Beta(a, b) restricted to (p, 1): the evidence against "accuracy <= p"."""
    wrong = n - right
    log_integral = _log_beta(a + right, b + wrong) + _log_upper_tail(a + right, b + wrong, p)
    log_prior = _log_beta(a, b) + _log_upper_tail(a, b, p)
    return log_integral - log_prior - right * math.log(p) - wrong * math.log1p(-p)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_upper_tail(a: float, b: float, x: float) -> float:
    """log(1 - I_x(a, b)), the upper tail of the Beta(a, b) distribution, by its continued fraction."""
    if x <= 0.0:
        return 0.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        lower_tail = math.exp(log_front) * _beta_fraction(a, b, x) / a
        return math.log1p(-lower_tail) if lower_tail < 1.0 else -math.inf
    return log_front + math.log(_beta_fraction(b, a, 1.0 - x) / b)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


# Calibration's bounds: the labelled items a job has, N, are known before its first look. So the error
# allowed (5% at 95%) is split in two, fixed before any answer is seen:
#
# - EARLY_SHARE of it (0.5%) on the anytime-valid bound above, read at every look (a clear case is
#   decided on a few slices of labels);
# - the rest (4.5%) on one exact fixed-sample bound (Clopper-Pearson, one-sided), read once: at the look
#   whose record holds all N labels.
#
# A false proof needs the first to cross at some look or the second to cross at the last; by the union
# bound that happens with probability at most 0.5% + 4.5%, however many looks were taken before. At
# 200 labels and a bar of 0.909, 189 right proves it (the anytime bound alone needs 192). Most of the
# error goes to the last look because that is where a close case is decided; a clear one crosses the
# anytime bound early even at 0.5% (it needs about a seventh more items than at 1%).
EARLY_SHARE = 0.1
BOUNDS_NOTE = "one-sided, sequential: 0.5% early looks, 4.5% last look"


def proving_bound(
    n: int, right: int, labels: int, confidence: float = 0.95, *, bar: float, ways: int = 1, last: bool = True
) -> float:
    """The lower bound calibration judges a record of `right` of `n` by, when the job has `labels`
    labelled items in all (see above). `ways` shares the early looks' error among that many routes
    judged on the same labels (cascade pairs); `last` is False for a route that does not get the last
    look's share (only one pair does)."""
    alpha = 1.0 - confidence
    early = anytime_lower_bound(n, right, 1.0 - alpha * EARLY_SHARE / max(1, ways), bar=bar)
    if not last or n < labels or labels <= 0:
        return early
    return max(early, exact_lower_bound(n, right, 1.0 - alpha * (1.0 - EARLY_SHARE)))


@lru_cache(maxsize=200_000)
def exact_lower_bound(n: int, right: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson lower bound on an accuracy seen as `right` of `n`, valid for one
    look at a sample size fixed in advance: the accuracy p at which P(at least `right` of `n` | p) is
    1 - confidence. (P(X >= k | p) is the regularized incomplete beta I_p(k, n - k + 1).)"""
    _check(n, right, confidence)
    if right == 0:
        return 0.0
    alpha = 1.0 - confidence
    if right == n:
        return alpha ** (1.0 / n)
    lo, hi = 0.0, right / n
    for _ in range(60):
        mid = (lo + hi) / 2.0
        at_least = -math.expm1(_log_upper_tail(float(right), float(n - right + 1), mid))
        if at_least < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@lru_cache(maxsize=20_000)
def share_to_prove(labels: int, bar: float, confidence: float = 0.95) -> float | None:
    """The smallest share right of all `labels` items whose proving bound meets `bar` at the last
    look (None: not even every answer right does)."""
    if labels <= 0 or proving_bound(labels, labels, labels, confidence, bar=bar) < bar:
        return None
    lo, hi = 0, labels  # hi proves
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if proving_bound(labels, mid, labels, confidence, bar=bar) >= bar:
            hi = mid
        else:
            lo = mid
    return hi / labels
