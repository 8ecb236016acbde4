"""How fast to call a model: its configured limits, scaled by a factor that adapts to 429s (AIMD).

A 429 halves the factor (multiplicative decrease, floor MIN_FACTOR): the provider says we are over
its real limit, which can be below the configured one (shared keys, tier changes). Every successful
call adds STEP back (additive increase, up to 1.0), so the rate climbs back over a few hundred calls.
"""

from __future__ import annotations

from dataclasses import dataclass

# Never below 5% of the configured rate: a misbehaving provider still gets probed.
MIN_FACTOR = 0.05
# +0.5% of the configured rate per success: from half speed back to full in 100 successes.
STEP = 0.005


@dataclass(frozen=True, slots=True)
class RateDecision:
    factor: float
    reason: str


def after_rate_limited(factor: float) -> RateDecision:
    new = max(MIN_FACTOR, factor / 2)
    return RateDecision(new, f"429: rate {factor:.0%} -> {new:.0%} of the configured limit")


def after_success(factor: float) -> RateDecision:
    new = min(1.0, factor + STEP)
    return RateDecision(new, "success" if new == factor else f"success: rate {factor:.1%} -> {new:.1%}")


def limits_now(rpm: int | None, tpm: int | None, factor: float) -> tuple[float | None, float | None]:
    """Requests and tokens per second allowed now (None: unlimited)."""
    return (rpm * factor / 60 if rpm else None, tpm * factor / 60 if tpm else None)
