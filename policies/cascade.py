"""Cascades, as a decision: two cheap models answer; where they agree their answer stands, where they
do not the item escalates to the strong model. Judged on the calibration sample's answers.

The cascade is chosen when its own lower bound (Wilson, on the sample items all three answered)
meets the bar and its expected cost per item (both cheap calls, plus the escalated share of the
strong one) is below the strong model's alone. Agreement needs no threshold to fit, so the only
choice made on the sample is which pair: the bound is of the chosen pair's own accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from policies.confidence import wilson_lower_bound


@dataclass(frozen=True, slots=True)
class CascadeChoice:
    use_cascade: bool
    first_id: str
    second_id: str
    strong_id: str
    expected_cost_usd: Decimal
    single_cost_usd: Decimal
    n: int
    right: int
    escalated: int
    reasons: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "use_cascade": self.use_cascade,
            "first_id": self.first_id,
            "second_id": self.second_id,
            "strong_id": self.strong_id,
            "expected_cost_usd": str(self.expected_cost_usd),
            "single_cost_usd": str(self.single_cost_usd),
            "n": self.n,
            "right": self.right,
            "escalated": self.escalated,
            "reasons": list(self.reasons),
        }


def choose_cascade(
    *,
    answers: dict[str, dict[int, str | None]],
    truth: dict[int, str],
    costs: dict[str, Decimal],
    single: str | None,
    bar: float,
    confidence: float,
) -> CascadeChoice | None:
    """Two cheap models answer; if they agree that answer stands, else the single choice answers.
    The cascade wins when its bound meets the bar at a lower expected cost than the single model."""
    if single is None or single not in answers:
        return None
    cheap = [m for m in answers if m != single and costs.get(m, Decimal(0)) < costs[single]]
    best: CascadeChoice | None = None
    for a_index, first in enumerate(cheap):
        for second in cheap[a_index + 1 :]:
            items = [i for i in truth if i in answers[first] and i in answers[second] and i in answers[single]]
            if not items:
                continue
            right = escalated = 0
            for i in items:
                a, b = answers[first][i], answers[second][i]
                if a is not None and a == b:
                    right += a == truth[i]
                else:
                    escalated += 1
                    right += answers[single][i] == truth[i]
            n = len(items)
            lower = wilson_lower_bound(right / n, n, confidence)
            cost = costs[first] + costs[second] + costs[single] * Decimal(escalated) / Decimal(n)
            use = lower >= bar and cost < costs[single]
            reasons = (
                f"cascade {first} + {second} -> {single}: {right}/{n} right, bound {lower:.3f} "
                f"({'meets' if lower >= bar else 'misses'} bar {bar:.3f}), {escalated}/{n} escalated, "
                f"${cost:.8f}/item vs ${costs[single]:.8f} on {single} alone",
            )
            choice = CascadeChoice(use, first, second, single, cost, costs[single], n, right, escalated, reasons)
            if best is None or (use, -cost) > (best.use_cascade, -best.expected_cost_usd):
                best = choice
    return best
