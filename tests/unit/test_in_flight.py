"""policies/in_flight.py: a stated window is cut by any overload answer; a learned one (no stated
max_in_flight) only when overload answers are a large share of the recent ones."""

from __future__ import annotations

from policies.in_flight import CUT_GAP_S, OVERLOAD_CUT, Window, after_answer, after_overload


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
