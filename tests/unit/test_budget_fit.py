"""The pure budget arithmetic."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies.budget_fit import fits, items_that_fit

D = Decimal


@pytest.mark.parametrize(
    ("costs", "remaining", "expected"),
    [
        ([D("1"), D("1"), D("1")], D("3"), 3),
        ([D("1"), D("1"), D("1")], D("2.9999999999"), 2),
        ([D("0.0000000001")] * 5, D("0.0000000003"), 3),
        ([D("2"), D("0.5")], D("1"), 0),  # in order: a cheap item behind an expensive one waits its turn
        ([], D("1"), 0),
        ([D("1")], D("0"), 0),
    ],
)
def test_items_that_fit(costs: list[Decimal], remaining: Decimal, expected: int) -> None:
    assert items_that_fit(costs, remaining) == expected


@pytest.mark.parametrize(
    ("cost", "remaining", "expected"),
    [(D("5"), None, True), (D("5"), D("5"), True), (D("5.0000000001"), D("5"), False)],
)
def test_fits(cost: Decimal, remaining: Decimal | None, expected: bool) -> None:
    assert fits(cost, remaining) is expected
