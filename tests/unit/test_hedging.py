"""policies.hedging: when a straggling call is sent again, and whether the job can afford it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies.hedging import (
    HEDGE_ALLOWANCE,
    HEDGE_FLOOR_S,
    MIN_SAMPLES,
    hedge_after,
    hedges_left,
    worth_hedging,
)


def test_too_few_answers_say_nothing_about_the_tail() -> None:
    assert hedge_after([0.05] * (MIN_SAMPLES - 1), timeout_s=60) is None
    assert hedge_after([0.05] * MIN_SAMPLES, timeout_s=60) == HEDGE_FLOOR_S


@pytest.mark.parametrize(
    ("samples", "timeout_s", "expected"),
    [
        ([0.05] * 100, 60.0, HEDGE_FLOOR_S),  # fast calls: never hedged sooner than the floor
        ([1.0] * 95 + [2.0] * 5, 60.0, 6.0),  # 3 x the 95th percentile (2 s)
        ([1.0] * 96 + [30.0] * 4, 60.0, 3.0),  # the slowest 4% do not move the 95th percentile
        ([4.0] * 100, 20.0, None),  # 12 s is past half the timeout: too late to save anything
        ([4.0] * 100, 24.0, 12.0),
    ],
)
def test_a_straggler_is_out_three_times_the_models_95th_percentile(
    samples: list[float], timeout_s: float, expected: float | None
) -> None:
    assert hedge_after(samples, timeout_s) == expected


def test_hedges_are_a_small_share_of_a_batchs_calls() -> None:
    assert hedges_left(calls=0, hedged=0) == HEDGE_ALLOWANCE
    assert hedges_left(calls=400, hedged=0) == 20 + HEDGE_ALLOWANCE
    assert hedges_left(calls=400, hedged=24) == 0
    assert hedges_left(calls=400, hedged=30) == 0


@pytest.mark.parametrize(
    ("call_usd", "route_usd", "baseline_usd", "worth"),
    [
        ("0.001", "0.001", "0.01", True),  # a cheap route: its saving pays for its hedges
        ("0.01", "0.001", "0.01", True),  # a fallback on the baseline model, on a cheap route
        ("0.02", "0.001", "0.01", False),  # a fallback dearer than the baseline
        ("0.0099", "0.0099", "0.01", False),  # a route that saves 1%: not enough to pay for hedges
        ("0.0095", "0.0095", "0.01", True),
        ("0.01", "0.01", "0.01", False),  # the route is the baseline: nothing saved
        ("0.001", "0.001", None, False),  # no baseline: nothing to weigh the hedges against
    ],
)
def test_a_hedge_is_paid_for_by_the_routes_saving(
    call_usd: str, route_usd: str, baseline_usd: str | None, worth: bool
) -> None:
    assert (
        worth_hedging(
            call_usd=Decimal(call_usd),
            route_usd=Decimal(route_usd),
            baseline_usd=None if baseline_usd is None else Decimal(baseline_usd),
        )
        is worth
    )
