"""A circuit breaker per provider: after too many failures in a row, stop calling it for a while.

closed     calls go through; each retryable failure (5xx, timeout, connection) adds one to the
           count, each success resets it.
open       after THRESHOLD failures in a row: calls fail fast for COOLDOWN_S (the items move to
           their fallback models instead of hammering a provider that is down).
half-open  after the cooldown: calls go through again; the first failure re-opens at once, the
           first success closes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# 20 failures in a row: far more than a fault mix of 20% ever gives by chance (0.2^20), few enough
# that a provider that is down is noticed within one chunk's worth of calls.
THRESHOLD = 20
# Long enough for a provider's incident to pass or an operator to notice; below MAX_WAIT_S of a chunk.
COOLDOWN_S = 30.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    failures: int = 0
    open_until: float = 0.0
    half_open: bool = False


@dataclass(frozen=True, slots=True)
class BreakerDecision:
    allowed: bool
    retry_in_s: float
    reason: str


def allows(state: BreakerState, now: float) -> BreakerDecision:
    if state.open_until > now:
        return BreakerDecision(
            False,
            state.open_until - now,
            f"circuit open after {THRESHOLD} failures in a row; retry in {state.open_until - now:.0f} s",
        )
    return BreakerDecision(True, 0.0, "half-open: probing" if state.half_open else "closed")


def on_failure(
    state: BreakerState, now: float, *, threshold: int = THRESHOLD, cooldown_s: float = COOLDOWN_S
) -> BreakerState:
    failures = state.failures + 1
    if state.half_open or failures >= threshold:
        return BreakerState(failures=0, open_until=now + cooldown_s, half_open=True)
    return replace(state, failures=failures)


def on_success(state: BreakerState) -> BreakerState:
    return BreakerState()
