"""Wilson score bounds for a proportion measured on n samples.

We report the ends of the *two-sided* interval at the given confidence, so the default
0.95 gives the familiar z = 1.96 and "lower 95% bound" means the lower end of the 95%
interval (a one-sided 95% bound would use z = 1.645 and be less conservative).
"""

from __future__ import annotations

import math
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
