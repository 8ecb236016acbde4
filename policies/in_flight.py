"""How many calls one provider may have in flight: its catalog `max_in_flight`, narrowed when it shows
overload and widened again as it answers (AIMD, as TCP's congestion window).

Overload is what a small self-hosted server does when too many calls reach it: connection resets,
timeouts, 503s (Anthropic's 529). One such answer cuts the window by OVERLOAD_CUT (once per
CUT_GAP_S: the other calls sent with it were sent at the old width), never below MIN_WINDOW; each
answer adds 1/window, so the window widens by one per window's worth of answers, back up to the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

# A cut of 30%: an overloaded server needs relief at once, and one cut is one signal.
OVERLOAD_CUT = 0.7
# Overload answers within this long of a cut were calls sent at the old width: the same signal.
CUT_GAP_S = 2.0
# One call is always allowed: the server is still probed.
MIN_WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class Window:
    """A provider's allowed calls in flight now (a float, so widening is gradual), its cap, the last cut."""

    width: float
    cap: int
    cut_at: float = 0.0

    @property
    def slots(self) -> int:
        return max(1, int(self.width))


def after_overload(window: Window, *, now: float) -> tuple[Window, str]:
    """A reset, timeout, 503 or 529: narrow the window, unless it was cut within CUT_GAP_S."""
    if now - window.cut_at < CUT_GAP_S:
        return window, "overload of a call sent before the last cut"
    width = max(MIN_WINDOW, window.width * OVERLOAD_CUT)
    return Window(width, window.cap, now), f"overload: {window.slots} -> {max(1, int(width))} calls in flight"


def after_answer(window: Window) -> Window:
    """An answer: widen by 1/width, up to the cap."""
    if window.width >= window.cap:
        return window
    return Window(min(float(window.cap), window.width + 1 / window.width), window.cap, window.cut_at)
