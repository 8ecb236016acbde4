"""policies/circuit_breaker.py and the breaker's part of policies/escalation.py, as tables: the
cooldown grows from COOLDOWN_MIN_S with each failed probe up to COOLDOWN_MAX_S and starts over after
a success; an item refused by an open breaker, with time left, waits for the breaker, not a backoff."""

from __future__ import annotations

import pytest

from policies.circuit_breaker import (
    COOLDOWN_MAX_S,
    COOLDOWN_MIN_S,
    THRESHOLD,
    BreakerState,
    allows,
    cooldown,
    on_failure,
    on_success,
)
from policies.escalation import BREAKER_WAIT_S, after_failure


def _opened(now: float) -> BreakerState:
    state = BreakerState()
    for _ in range(THRESHOLD):
        state = on_failure(state, now)
    return state


@pytest.mark.parametrize(
    ("opens", "seconds"),
    [(1, COOLDOWN_MIN_S), (2, 2 * COOLDOWN_MIN_S), (3, min(4 * COOLDOWN_MIN_S, COOLDOWN_MAX_S)), (50, COOLDOWN_MAX_S)],
)
def test_the_cooldown_doubles_up_to_its_maximum(opens: int, seconds: float) -> None:
    assert cooldown(opens) == pytest.approx(seconds)


def test_each_failed_probe_reopens_for_a_longer_cooldown_and_a_success_starts_over() -> None:
    state = _opened(100.0)
    assert state.opens == 1 and state.open_until == pytest.approx(100.0 + COOLDOWN_MIN_S)
    now, seen = 100.0, []
    for _ in range(6):  # the cooldown ends, the probe goes and fails
        now = state.open_until
        assert allows(state, now).probe
        state = on_failure(state, now)
        seen.append(round(state.open_until - now, 6))
    assert seen == [cooldown(k) for k in range(2, 8)] and seen[-1] == COOLDOWN_MAX_S
    assert seen == sorted(seen) and seen[0] > COOLDOWN_MIN_S  # it grew
    state = on_success(state)  # the probe answered: closed, and the next opening starts short again
    assert state == BreakerState() and _opened(now).open_until - now == pytest.approx(COOLDOWN_MIN_S)


def test_calls_sent_before_it_opened_that_fail_while_it_is_open_do_not_extend_it() -> None:
    """The calls in flight when it opened come back failing after it: no new signal (only a probe,
    after the cooldown, tells whether the provider is back)."""
    state = _opened(100.0)
    assert on_failure(state, 100.2, started=99.9) == state
    assert on_failure(state, 100.2, started=99.9, unanswered=True) == state


@pytest.mark.parametrize(
    ("time_left_s", "retry", "until_breaker_s"),
    [(300.0, True, BREAKER_WAIT_S), (12.0, True, 12.0), (0.0, False, 0.0), (-1.0, False, 0.0)],
)
def test_an_item_refused_by_an_open_breaker_waits_for_the_breaker_while_time_is_left(
    time_left_s: float, retry: bool, until_breaker_s: float
) -> None:
    decision = after_failure(
        attempt=7, retryable=True, retry_after=1.7, provider_stopped=False, time_left_s=time_left_s, breaker_open=True
    )
    assert (decision.retry, decision.wait_s, decision.until_breaker_s) == (retry, 0.0, until_breaker_s)


def test_other_faults_and_items_with_a_fallback_keep_their_backoff() -> None:
    no_deadline = after_failure(attempt=0, retryable=True, retry_after=1.5, provider_stopped=False, breaker_open=True)
    a_500 = after_failure(attempt=0, retryable=True, retry_after=None, provider_stopped=False, time_left_s=300.0)
    assert (no_deadline.retry, no_deadline.wait_s, no_deadline.until_breaker_s) == (True, 1.5, 0.0)
    assert (a_500.retry, a_500.wait_s, a_500.until_breaker_s) == (True, 0.5, 0.0)
