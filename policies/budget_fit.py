"""How much of a batch a budget can take: pure arithmetic on exact amounts."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal


def items_that_fit(worst_costs: Sequence[Decimal], remaining: Decimal) -> int:
    """How many items, taken in order, fit in `remaining` at their worst-case costs."""
    total = Decimal(0)
    for count, cost in enumerate(worst_costs):
        total += cost
        if total > remaining:
            return count
    return len(worst_costs)


def fits(expected_cost: Decimal, remaining: Decimal | None) -> bool:
    """Whether a job's expected cost fits what is left (None: the team has no budget)."""
    return remaining is None or expected_cost <= remaining
