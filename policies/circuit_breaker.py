"""A circuit breaker per provider: after too many failures in a row, stop calling it for a while.

closed     calls go through; each retryable failure (5xx, timeout, connection) adds one to the
           count, each success resets it. A 5xx is the provider's own answer and counts on its own;
           calls that got no answer (timeouts, resets) and started together (within CORRELATION_S of
           the last counted one) fail for one cause and count once: 20 calls sent at once that time
           out together are one burst, not "20 failures in a row".
open       after THRESHOLD failures in a row: calls fail fast for COOLDOWN_S (the items move to
           their fallback models instead of hammering a provider that is down).
half-open  after the cooldown: one call goes through as a probe (the others wait PROBE_WAIT_S and
           ask again); its failure re-opens for another cooldown, its success closes. One probe per
           cooldown costs a provider that is down one call every few seconds, so the cooldown can
           be short and a provider back from an outage is used again within COOLDOWN_S.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# 20 failures in a row: far more than a fault mix of 20% ever gives by chance (0.2^20), few enough
# that a provider that is down is noticed within one chunk's worth of calls.
THRESHOLD = 20
# Short: only one probe call goes out per cooldown, so a long outage costs one call per COOLDOWN_S,
# and items resume within COOLDOWN_S of the provider coming back.
COOLDOWN_S = 5.0
# Callers refused while another call probes ask again after this long.
PROBE_WAIT_S = 1.0
# Calls started within this many seconds of each other fail together for one cause (a burst of
# hangs, a reset of every pooled connection): so the breaker opens only after failures spread over
# at least THRESHOLD of these windows with no success between them (a provider that is down).
CORRELATION_S = 1.0


@dataclass(frozen=True, slots=True)
class BreakerState:
    failures: int = 0
    open_until: float = 0.0
    half_open: bool = False
    burst_started: float = 0.0  # when the call behind the last counted failure started


@dataclass(frozen=True, slots=True)
class BreakerDecision:
    allowed: bool
    retry_in_s: float
    reason: str
    probe: bool = False  # half-open: allowed only for the one caller that claims the probe


def allows(state: BreakerState, now: float) -> BreakerDecision:
    if state.open_until > now:
        return BreakerDecision(
            False,
            state.open_until - now,
            f"circuit open after {THRESHOLD} failures in a row; retry in {state.open_until - now:.0f} s",
        )
    if state.half_open:
        return BreakerDecision(True, 0.0, "half-open: probing", probe=True)
    return BreakerDecision(True, 0.0, "closed")


def probing_elsewhere() -> BreakerDecision:
    """Half-open, and another call is the probe: wait for its outcome."""
    return BreakerDecision(False, PROBE_WAIT_S, "circuit half-open: one call is probing whether the provider is back")


def on_failure(
    state: BreakerState,
    now: float,
    *,
    started: float | None = None,
    unanswered: bool = False,
    threshold: int = THRESHOLD,
    cooldown_s: float = COOLDOWN_S,
) -> BreakerState:
    """Count a failure of a call that started at `started` (default: now). An `unanswered` failure
    (timeout, reset) of a call started within CORRELATION_S of the last counted one is the same burst."""
    started = now if started is None else started
    if state.half_open:
        return BreakerState(failures=0, open_until=now + cooldown_s, half_open=True)
    if unanswered and state.failures and abs(started - state.burst_started) < CORRELATION_S:
        return state  # the same burst as the last counted failure: one signal
    failures = state.failures + 1
    if failures >= threshold:
        return BreakerState(failures=0, open_until=now + cooldown_s, half_open=True)
    return replace(state, failures=failures, burst_started=started)


def on_success(state: BreakerState) -> BreakerState:
    return BreakerState()
