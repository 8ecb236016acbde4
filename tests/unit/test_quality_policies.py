"""The pure quality decisions: calibration steps, cascades, drift, scoring (table-driven)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from policies.calibration import next_step
from policies.cascade import choose_cascade
from policies.drift import MIN_CHECKS, judge_drift

MODELS = ("cheap", "mid", "dear")


@pytest.mark.parametrize(
    ("counts", "sample", "kind", "model"),
    [
        ({}, 200, "test", "cheap"),  # nothing measured: the cheapest answers first
        ({"cheap": (100, 100)}, 200, "chosen", "cheap"),  # 100/100: lower bound 0.941 >= 0.9 (98.75% per look)
        ({"cheap": (50, 50)}, 200, "test", "cheap"),  # 50/50 is not yet proof at 98.75% per look: 0.889
        ({"cheap": (50, 30)}, 200, "test", "mid"),  # 30/50: upper bound 0.73 < 0.9, dropped
        ({"cheap": (50, 46)}, 200, "test", "cheap"),  # 46/50 undecided: next slice
        ({"cheap": (200, 184), "mid": (200, 30), "dear": (200, 40)}, 200, "need_more", "cheap"),
        ({"cheap": (200, 20), "mid": (200, 30), "dear": (200, 40)}, 200, "none", None),
        ({"cheap": (12, 12), "mid": (12, 11), "dear": (12, 12)}, 12, "need_more", "cheap"),  # 12 items cannot prove 0.9
    ],
)
def test_calibration_steps(counts: dict[str, tuple[int, int]], sample: int, kind: str, model: str | None) -> None:
    step = next_step(models=MODELS, counts=counts, sample_size=sample, bar=0.9, confidence=0.95, slice_size=50)
    assert (step.kind, step.model_id) == (kind, model), step.reason
    if kind == "need_more":
        assert step.n_items > 0 and f"about {step.n_items} more labelled items would decide it" in step.reason


def test_cascade_wins_when_cheap_models_agree_and_are_right() -> None:
    truth = {i: "a" for i in range(300)}
    cheap = {i: ("a" if i % 10 else "b") for i in range(300)}  # 90% right
    other = {i: ("a" if i % 10 else "c") for i in range(300)}  # wrong on the same items, differently
    strong = {i: "a" for i in range(300)}
    costs = {"c1": Decimal("0.001"), "c2": Decimal("0.001"), "s": Decimal("0.01")}
    choice = choose_cascade(
        answers={"c1": cheap, "c2": other, "s": strong}, truth=truth, costs=costs, single="s", bar=0.95, confidence=0.95
    )
    assert choice is not None and choice.use_cascade and choice.escalated == 30 and choice.right == 300
    assert choice.expected_cost_usd == Decimal("0.003") and "meets bar" in choice.reasons[0]


def test_cascade_loses_when_cheap_models_agree_on_wrong_answers() -> None:
    truth = {i: "a" for i in range(300)}
    wrong_together = {i: ("a" if i % 5 else "b") for i in range(300)}  # 80% right, wrong alike
    costs = {"c1": Decimal("0.001"), "c2": Decimal("0.001"), "s": Decimal("0.01")}
    choice = choose_cascade(
        answers={"c1": wrong_together, "c2": dict(wrong_together), "s": dict(truth)},
        truth=truth,
        costs=costs,
        single="s",
        bar=0.95,
        confidence=0.95,
    )
    assert choice is not None and not choice.use_cascade and "misses bar" in choice.reasons[0]


@pytest.mark.parametrize(
    ("n", "agree", "drifted"), [(MIN_CHECKS - 1, 0, False), (40, 38, False), (40, 20, True), (200, 170, True)]
)
def test_drift(n: int, agree: int, drifted: bool) -> None:
    assert judge_drift(n=n, agree=agree, bar=0.9).drifted is drifted


def test_on_held_out_sandbox_items_the_chosen_configuration_meets_the_bar() -> None:
    """A small run of bench/quality.py: at 0.90 and 0.95 of the best model's accuracy, the policy's
    choice meets the bar on held-out items in >= 95% of the runs, and cascades cost less than the
    single model they escalate to."""
    from bench.quality import evaluate, sandbox_table

    results = evaluate(sandbox_table(1500), sample_size=200, runs=40, quiet=True)
    for fraction in (0.90, 0.95):
        chosen = results[fraction]["policy's choice"]
        assert chosen[2] >= 0.95, (fraction, chosen)
        cheaper_share, _, _, cascades = results[fraction]["cascade cheaper than its single"]
        assert cascades == 0 or cheaper_share >= 0.8  # on held-out items, run by run
