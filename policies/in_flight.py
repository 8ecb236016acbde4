"""How many calls one provider may have in flight: its catalog `max_in_flight`, or, when the catalog
states none, as many as the process sends (its calls-in-flight gate); narrowed when the provider shows
overload and widened again as it answers (AIMD, as TCP's congestion window).

Overload is what a small self-hosted server does when too many calls reach it: connection resets,
timeouts, 503s (Anthropic's 529). Under a stated `max_in_flight`, one such answer cuts the window by
OVERLOAD_CUT. A window nobody stated (`learned`) is cut only once overload answers make up
OVERLOAD_SHARE of the recent ones: a cloud API answers a few 503s and timeouts at any load, and
those must not throttle it; a flooded server fails a large share of what it is sent. Either way the
overload answers of calls sent before a cut were sent at the old width: they are the same signal, and
only a call sent after the cut (at the new width) that still meets overload cuts again (when the
send time is not known, a cut happens at most once per CUT_GAP_S). So a window far too wide (400
calls against a server that holds 50) comes down in a few round trips, not a few seconds each;
it never goes below MIN_WINDOW. Each answer adds 1/window, so the window widens by one per window's
worth of answers, back up to the cap (slower near the width a learned window was last cut at).

A learned window also starts narrow (SLOW_START) and doubles every RAMP_S until its first cut, as
TCP's slow start: a small server is never sent the whole gate at once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# A cut of 30%: an overloaded server needs relief at once, and one cut is one signal.
OVERLOAD_CUT = 0.7
# Overload answers within this long of a cut, from calls whose send time is not known, are taken for
# calls sent at the old width: the same signal.
CUT_GAP_S = 2.0
# One call is always allowed: the server is still probed.
MIN_WINDOW = 1.0
# A learned window is cut when overload answers are this share of the recent ones (an exponential
# average over about SHARE_SPAN answers). A 20% fault mix of independent faults holds about 6%
# overload answers (503, 529, hangs), several standard deviations below it; a server refusing what
# it cannot hold fails far more.
OVERLOAD_SHARE = 0.2
SHARE_SPAN = 50
# A learned window starts this wide and, until its first cut, doubles every RAMP_S (and widens by one
# per answer): a server that holds 50 is not sent 400 at once (350 resets, each charged at its worst
# case as a call that may have been billed), since it refuses the calls beyond its limit within
# milliseconds, long before the next doubling; a cloud API is at the full width within a second,
# whether its calls take 50 ms or 50 s, and a burst of hung calls cannot hold the window shut.
SLOW_START = 32
RAMP_S = 0.25
# Once a learned window has been cut (the server showed a limit of its own), the width it was cut at
# is its ceiling: it widens this many times slower within CEILING_MARGIN of it, so it holds just
# under the server's limit instead of crossing it every few round trips (as TCP CUBIC plateaus near
# its last loss). (A lower share to cut at, once cut, would hold a flooded server tighter; but a
# cloud API's incidental 503s, 529s, timeouts and cut-off bodies run near 10% under a 20% fault mix,
# and one cut by chance would then keep cutting it.)
PAST_CEILING_SLOWDOWN = 10.0
CEILING_MARGIN = 0.9


@dataclass(frozen=True, slots=True)
class Window:
    """A provider's allowed calls in flight now (a float, so widening is gradual), its cap, the last
    cut, whether nobody stated the cap (learned), the recent share of overload answers, and the width it
    was last cut at."""

    width: float
    cap: int
    cut_at: float = 0.0
    learned: bool = False
    overload_share: float = 0.0
    ceiling: float = 0.0  # the width at the last cut (0: never cut)
    opened_at: float = 0.0  # when the window opened (its slow start's clock)

    @property
    def slots(self) -> int:
        return max(1, int(self.width))


def after_overload(window: Window, *, now: float, sent_at: float | None = None) -> tuple[Window, str]:
    """A reset, timeout, 503 or 529 of a call sent at `sent_at`: narrow the window, unless the call was
    sent before the last cut (or, its send time unknown, the window was cut within CUT_GAP_S) or (a
    learned window) overload answers are still a small share of the recent ones."""
    share = window.overload_share + (1 - window.overload_share) / SHARE_SPAN
    if window.learned and share < OVERLOAD_SHARE:
        return replace(window, overload_share=share), f"overload answers {share:.0%} of recent ones: incidental"
    sent_before_cut = sent_at < window.cut_at if sent_at is not None else now - window.cut_at < CUT_GAP_S
    if sent_before_cut:
        return replace(window, overload_share=share), "overload of a call sent before the last cut"
    width = max(MIN_WINDOW, window.width * OVERLOAD_CUT)
    return (
        replace(window, width=width, cut_at=now, overload_share=share, ceiling=window.width),
        f"overload: {window.slots} -> {max(1, int(width))} calls in flight",
    )


def opening(cap: int, *, learned: bool, now: float = 0.0) -> Window:
    """A provider's window before any call: a stated cap at once, a learned one from SLOW_START."""
    return Window(float(min(cap, SLOW_START) if learned else cap), cap, learned=learned, opened_at=now)


def ramped(window: Window, *, now: float) -> Window:
    """A learned window in slow start (never cut) at least SLOW_START doubled every RAMP_S since it
    opened, up to its cap; any other window as it is."""
    if not window.learned or window.ceiling or window.width >= window.cap:
        return window
    doublings = min(max(0.0, now - window.opened_at) / RAMP_S, 16.0)
    width = min(float(window.cap), SLOW_START * 2**doublings)
    return replace(window, width=width) if width > window.width else window


def after_answer(window: Window) -> Window:
    """An answer: widen by one in slow start (a learned window never cut), else by 1/width
    (PAST_CEILING_SLOWDOWN times less near the ceiling), up to the cap."""
    share = window.overload_share * (1 - 1 / SHARE_SPAN)
    if window.width >= window.cap:
        return window if not window.overload_share else replace(window, overload_share=share)
    step = 1.0 if window.learned and not window.ceiling else 1 / window.width  # slow start until the first cut
    if window.learned and window.ceiling and window.width >= CEILING_MARGIN * window.ceiling:
        step /= PAST_CEILING_SLOWDOWN
    return replace(window, width=min(float(window.cap), window.width + step), overload_share=share)
