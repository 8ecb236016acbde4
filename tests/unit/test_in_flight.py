"""policies/in_flight.py: a stated window is cut by any overload answer; a learned one (no stated
max_in_flight) only when overload answers are a large share of the recent ones."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies.in_flight import (
    CUT_GAP_S,
    OVERLOAD_CUT,
    PAST_CEILING_SLOWDOWN,
    RAMP_S,
    SLOW_START,
    Window,
    after_answer,
    after_overload,
    opening,
    ramped,
)


def _run(window: Window, pattern: list[bool], *, seconds_per_answer: float) -> Window:
    now = 0.0
    for overloaded in pattern:
        now += seconds_per_answer
        window = after_overload(window, now=now)[0] if overloaded else after_answer(window)
    return window


def test_a_stated_window_is_cut_by_one_overload_answer() -> None:
    window, why = after_overload(Window(10.0, 10), now=100.0)
    assert window.width == 10 * OVERLOAD_CUT and "10 -> 7" in why
    assert after_overload(window, now=100.0 + CUT_GAP_S / 2)[0].width == window.width  # same signal


def test_only_a_call_sent_after_the_cut_cuts_again() -> None:
    """Overload answers of calls sent at the old width are the cut's own signal; one sent after the
    cut is a new one, however soon it comes back: a far too wide window comes down in round trips."""
    window, _ = after_overload(Window(400.0, 400), now=100.0, sent_at=99.95)
    assert window.width == 400 * OVERLOAD_CUT
    assert after_overload(window, now=100.05, sent_at=99.99)[0].width == window.width  # sent before the cut
    again, _ = after_overload(window, now=100.06, sent_at=100.01)  # sent at the new width, still too many
    assert again.width == pytest.approx(400 * OVERLOAD_CUT**2)
    width, now = Window(400.0, 400), 100.0
    for _ in range(7):  # a server that holds 50: each round trip of 60 ms ends in resets until it fits
        if width.slots <= 50:
            break
        width, _ = after_overload(width, now=now + 0.06, sent_at=now + 0.001)
        now += 0.06
    assert width.slots <= 50 and now - 100.0 < 0.5


def test_a_learned_window_ignores_a_cloud_apis_incidental_faults() -> None:
    # 6% overload answers (a 20% mix of independent faults: 503s, 529s, hangs), spread evenly, for 5,000 answers.
    pattern = [k % 17 == 0 for k in range(5000)]
    window = _run(Window(400.0, 400, learned=True), pattern, seconds_per_answer=0.01)
    assert window.width == 400 and window.overload_share < 0.1


def test_a_learned_window_finds_a_flooded_servers_limit() -> None:
    # A server that holds 50 calls and resets the rest: at 400 in flight, most answers are resets.
    window = Window(400.0, 400, learned=True)
    now = 0.0
    for _ in range(40):  # 40 gaps' worth of answers at the window's width
        now += CUT_GAP_S
        for k in range(window.slots):
            overloaded = k >= 50  # the calls beyond the server's 50
            window = after_overload(window, now=now)[0] if overloaded else after_answer(window)
    assert 35 <= window.slots <= 80  # held near what the server takes, not at 400, not at 1


def test_the_first_429s_of_a_burst_are_judged_against_the_whole_burst() -> None:
    """A 429 comes back at once, answers after their latency: 20 of 400 calls sent together answered
    429 (a 5% fault mix) are 5% of the burst, not 100% of the responses back so far, and start no
    learned rate; 200 of 400 (a real limit) do."""
    import asyncio

    from router.providers.limits import SharedLimits

    async def learned_after(n_429: int, burst: int) -> bool:
        limits = SharedLimits(None)  # in memory: this process only
        for k in range(n_429):
            await limits.observe("m", rpm=None, tpm=None, rate_limited=True, retry_after=None, unanswered=burst - 1 - k)
        return not limits.learned_known("m")  # known to have no learned rate, or not

    assert not asyncio.run(learned_after(20, 400))
    assert asyncio.run(learned_after(200, 400))


def test_a_learned_window_starts_slow_and_ramps_with_time_until_its_first_cut() -> None:
    """Slow start: SLOW_START calls at first, doubling every RAMP_S whether or not anything came back
    (a burst of hung calls cannot hold it shut), and one more per answer; a stated window opens whole."""
    assert opening(400, learned=False, now=0.0).slots == 400
    window = opening(400, learned=True, now=10.0)
    assert window.slots == SLOW_START
    assert ramped(window, now=10.0 + RAMP_S).slots == 2 * SLOW_START
    assert ramped(window, now=10.0 + 10 * RAMP_S).slots == 400  # at its cap within a few doublings
    assert after_answer(window).width == SLOW_START + 1
    flooded = replace(ramped(window, now=10.0 + RAMP_S), overload_share=0.5)  # most answers are resets
    cut, _ = after_overload(flooded, now=11.0, sent_at=10.5)
    assert cut.ceiling == 2 * SLOW_START and ramped(cut, now=100.0) == cut  # cut once: no more ramp


def test_after_a_cut_the_window_widens_slowly_near_its_ceiling() -> None:
    cut, _ = after_overload(Window(60.0, 400, learned=True, overload_share=0.5), now=1.0, sent_at=0.9)
    assert cut.ceiling == 60.0 and cut.width == pytest.approx(42.0)
    fast = after_answer(cut)
    assert fast.width - cut.width == pytest.approx(1 / cut.width)  # well below the ceiling: 1/width
    near = replace(cut, width=56.0)
    assert after_answer(near).width - 56.0 == pytest.approx(1 / 56.0 / PAST_CEILING_SLOWDOWN)
