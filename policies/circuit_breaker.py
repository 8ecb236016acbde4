"""A circuit breaker per provider: after too many failures in a row, stop calling it for a while.

closed     calls go through; each retryable failure (5xx, timeout, connection) adds one to the
           count, each success resets it. A 5xx is the provider's own answer and counts on its own;
           calls that got no answer (timeouts, resets) and started together (within CORRELATION_S of
           the last counted one) fail for one cause and count once: 20 calls sent at once that time
           out together are one burst, not "20 failures in a row".
open       after THRESHOLD failures in a row: calls fail fast for a cooldown (the items move to
           their fallback models, or with none wait for the provider, instead of hammering it).
half-open  after the cooldown: one call goes through as a probe (the others wait for its outcome);
           its failure re-opens for the next cooldown, its success closes. The cooldown starts at
           COOLDOWN_MIN_S and doubles with each failed probe up to COOLDOWN_MAX_S (`cooldown`): a
           blip is noticed within a second of its end, and a long outage costs the provider one
           probe call every COOLDOWN_MAX_S, its end noticed within COOLDOWN_MAX_S.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# 20 failures in a row: far more than a fault mix of 20% ever gives by chance (0.2^20), few enough
# that a provider that is down is noticed within one chunk's worth of calls.
THRESHOLD = 20
# The first cooldown after the breaker opens, doubled after each failed probe up to COOLDOWN_MAX_S
# (0.5, 1, 2, 2... s). One probe call per cooldown: a provider that stays down gets one call every
# COOLDOWN_MAX_S (30 a minute, against the hundreds a second its waiting items would send), and
# items resume within one cooldown of its coming back, COOLDOWN_MAX_S / 2 on average after a long
# outage: every second of that is a second of every waiting item's work lost, so it is short.
COOLDOWN_MIN_S = 0.5
COOLDOWN_MAX_S = 2.0
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
    opens: int = 0  # times opened since the last success: the next cooldown doubles with each


@dataclass(frozen=True, slots=True)
class BreakerDecision:
    allowed: bool
    retry_in_s: float
    reason: str
    probe: bool = False  # half-open: allowed only for the one caller that claims the probe


def cooldown(opens: int) -> float:
    """How long the breaker stays open the `opens`-th time in a row (1: just opened):
    COOLDOWN_MIN_S, doubled after each failed probe, at most COOLDOWN_MAX_S."""
    return min(COOLDOWN_MIN_S * 2 ** min(max(opens, 1) - 1, 16), COOLDOWN_MAX_S)


def allows(state: BreakerState, now: float) -> BreakerDecision:
    if state.open_until > now:
        return BreakerDecision(
            False,
            state.open_until - now,
            f"circuit open after {THRESHOLD} failures in a row; probe in {state.open_until - now:.1f} s",
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
    cooldown_s: float | None = None,
) -> BreakerState:
    """Count a failure of a call that started at `started` (default: now). An `unanswered` failure
    (timeout, reset) of a call started within CORRELATION_S of the last counted one is the same burst.
    Opening (or re-opening after a failed probe) lasts `cooldown(opens)`, or `cooldown_s` if given."""
    started = now if started is None else started
    if state.half_open:
        if state.open_until > now:
            return state  # open already: a call sent before it opened, failing late, is no new signal
        opens = state.opens + 1  # the probe failed: a longer cooldown
        wait = cooldown(opens) if cooldown_s is None else cooldown_s
        return BreakerState(failures=0, open_until=now + wait, half_open=True, opens=opens)
    if unanswered and state.failures and abs(started - state.burst_started) < CORRELATION_S:
        return state  # the same burst as the last counted failure: one signal
    failures = state.failures + 1
    if failures >= threshold:
        wait = cooldown(1) if cooldown_s is None else cooldown_s
        return BreakerState(failures=0, open_until=now + wait, half_open=True, opens=1)
    return replace(state, failures=failures, burst_started=started)


def on_success(state: BreakerState) -> BreakerState:
    return BreakerState()
