"""How many calls one provider may have in flight: its catalog `max_in_flight`, or, when the catalog
states none, as many as the process sends (its calls-in-flight gate); narrowed when the provider shows
overload and widened again as it answers (AIMD, as TCP's congestion window).

Overload is what a small self-hosted server does when too many calls reach it: connection resets,
timeouts, 503s (Anthropic's 529). Under a stated `max_in_flight`, one such answer cuts the window by
OVERLOAD_CUT. A window nobody stated (`learned`) is cut only once overload answers make up
OVERLOAD_SHARE of the recent ones: a cloud API answers a few 503s and timeouts at any load, and
those must not throttle it; a flooded server fails a large share of what it is sent. Either way a
cut happens once per CUT_GAP_S (the other calls sent with it were sent at the old width) and never
below MIN_WINDOW; each answer adds 1/window, so the window widens by one per window's worth of
answers, back up to the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# A cut of 30%: an overloaded server needs relief at once, and one cut is one signal.
OVERLOAD_CUT = 0.7
# Overload answers within this long of a cut were calls sent at the old width: the same signal.
CUT_GAP_S = 2.0
# One call is always allowed: the server is still probed.
MIN_WINDOW = 1.0
# A learned window is cut when overload answers are this share of the recent ones (an exponential
# average over about SHARE_SPAN answers). A 20% fault mix of independent faults holds about 6%
# overload answers (503, 529, hangs), several standard deviations below it; a server refusing what
# it cannot hold fails far more.
OVERLOAD_SHARE = 0.2
SHARE_SPAN = 50


@dataclass(frozen=True, slots=True)
class Window:
    """A provider's allowed calls in flight now (a float, so widening is gradual), its cap, the last
    cut, whether nobody stated the cap (learned), and the recent share of overload answers."""

    width: float
    cap: int
    cut_at: float = 0.0
    learned: bool = False
    overload_share: float = 0.0

    @property
    def slots(self) -> int:
        return max(1, int(self.width))


def after_overload(window: Window, *, now: float) -> tuple[Window, str]:
    """A reset, timeout, 503 or 529: narrow the window, unless it was cut within CUT_GAP_S or (a
    learned window) overload answers are still a small share of the recent ones."""
    share = window.overload_share + (1 - window.overload_share) / SHARE_SPAN
    if window.learned and share < OVERLOAD_SHARE:
        return replace(window, overload_share=share), f"overload answers {share:.0%} of recent ones: incidental"
    if now - window.cut_at < CUT_GAP_S:
        return replace(window, overload_share=share), "overload of a call sent before the last cut"
    width = max(MIN_WINDOW, window.width * OVERLOAD_CUT)
    return (
        replace(window, width=width, cut_at=now, overload_share=share),
        f"overload: {window.slots} -> {max(1, int(width))} calls in flight",
    )


def after_answer(window: Window) -> Window:
    """An answer: widen by 1/width, up to the cap."""
    share = window.overload_share * (1 - 1 / SHARE_SPAN)
    if window.width >= window.cap:
        return window if not window.overload_share else replace(window, overload_share=share)
    return replace(window, width=min(float(window.cap), window.width + 1 / window.width), overload_share=share)
