"""The pure quality decisions: calibration steps, cascades, drift, scoring (table-driven)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from policies.calibration import FIRST_SLICE, CalibrationJob, Evidence, Option, labels_to_prove, next_step
from policies.confidence import anytime_lower_bound, anytime_upper_bound, exact_lower_bound, proving_bound
from policies.drift import MIN_CHECKS, judge_drift


def _job(
    labels: int = 200, *, bar: float = 0.9, n_items: int = 10_000, budget: str = "1000", **kw: object
) -> CalibrationJob:
    options = (
        Option("cheap", Decimal("0.0001"), prior=0.9),
        Option("mid", Decimal("0.0008"), prior=0.93),
        Option("dear", Decimal("0.001"), prior=0.96),
    )
    return CalibrationJob(
        bar=bar,
        options=options,
        labelled=tuple(range(labels)),
        n_items=n_items,
        n_to_run=n_items - labels,
        baseline_usd_per_item=Decimal("0.001"),
        budget_usd=Decimal(budget),
        **kw,  # type: ignore[arg-type]
    )


def _evidence(**records: tuple[int, int]) -> Evidence:
    """model=(n, right): the first `right` of its first `n` labelled items right."""
    right = {m: {i: i < k for i in range(n)} for m, (n, k) in records.items()}
    answers = {m: {i: ("a" if ok else f"wrong-{m}") for i, ok in r.items()} for m, r in right.items()}
    return Evidence(right=right, answers=answers, spent_usd=Decimal(0))


def test_the_cheapest_model_is_tested_first_and_a_clear_record_is_chosen() -> None:
    step = next_step(_job(), _evidence())
    assert (step.kind, step.model_id, len(step.items)) == ("test", "cheap", FIRST_SLICE)
    step = next_step(_job(), _evidence(cheap=(100, 100)))
    assert step.kind == "chosen" and step.route is not None and step.route.model_id == "cheap"
    assert "sequential" in step.reason and f"{step.route.measure.lower:.3f}" in step.reason


def test_a_model_is_never_chosen_on_its_prior() -> None:
    step = next_step(_job(), _evidence(mid=(200, 200)))  # cheap untested, prior 0.9: tested, not chosen
    assert step.kind == "test" and step.model_id == "cheap"
    assert next_step(_job(budget="0"), _evidence(mid=(200, 200))).route.model_id == "mid"  # type: ignore[union-attr]


def test_a_record_doubles_at_each_look_and_all_labels_are_used() -> None:
    step = next_step(_job(labels=1000), _evidence(cheap=(200, 188), mid=(400, 300), dear=(400, 300)))
    assert step.kind == "test" and step.model_id == "cheap" and len(step.items) == 200


def test_more_labels_decide_where_200_could_not() -> None:
    """0.935 on 200 labels cannot prove 0.9; the same rate on more labels can, so with them it tests on."""
    few = next_step(_job(labels=200, budget="0"), _evidence(cheap=(200, 187)))
    assert few.kind == "unproven" and few.more_labels > 0 and "more labelled items would decide it" in few.reason
    assert next_step(_job(labels=1000), _evidence(cheap=(200, 187))).kind == "test"
    assert next_step(_job(labels=1000), _evidence(cheap=(1000, 935))).kind == "chosen"


def test_labels_that_cannot_prove_the_bar_stop_before_any_test() -> None:
    step = next_step(_job(labels=12), _evidence())
    assert step.kind == "unproven" and step.more_labels == labels_to_prove(0.9, 0.95) - 12


def test_a_model_priced_near_the_best_route_is_not_worth_testing() -> None:
    # cheap is proven; mid would save nothing over it: no test, chosen.
    step = next_step(_job(), _evidence(cheap=(200, 196)))
    assert step.kind == "chosen" and step.model_id == "cheap"
    # On a tiny job no test pays for itself against the baseline-only run: nothing is bought.
    tiny = next_step(_job(labels=200, n_items=210), _evidence())
    assert tiny.kind == "test" and tiny.model_id == "dear" or tiny.kind == "unproven"


def test_calibration_never_breaks_the_baseline_only_cost() -> None:
    """Spent + the next test + the dearest route the job can still run on stays within every item on
    the baseline. A job that runs even unproven may run on the baseline: no test fits once the labels'
    worth is spent. A job that stops when unproven can still test a cheap model (its run would be cheap)."""
    job = _job(labels=200, n_items=400, run_unproven=True)
    spent = job.baseline_usd_per_item * 200  # as much as the labelled items are worth on the baseline
    step = next_step(job, Evidence(right={}, answers={}, spent_usd=spent))
    assert step.kind == "unproven" and "cost more, all in" in step.reason
    stops = next_step(replace(job, run_unproven=False), Evidence(right={}, answers={}, spent_usd=spent))
    assert stops.kind == "test" and stops.model_id == "cheap"


def test_a_cascade_is_judged_on_answers_bought_and_the_strong_model_only_where_they_disagree() -> None:
    truth = 300
    # cheap and mid are 90% right, wrong on the same items in different ways; dear is always right.
    right = {
        "cheap": {i: i % 10 != 0 for i in range(truth)},
        "mid": {i: i % 10 != 0 for i in range(truth)},
    }
    answers = {
        "cheap": {i: ("a" if i % 10 else "b") for i in range(truth)},
        "mid": {i: ("a" if i % 10 else "c") for i in range(truth)},
    }
    job = replace(
        _job(labels=truth, bar=0.95),
        options=(
            Option("cheap", Decimal("0.0001"), prior=0.9),
            Option("mid", Decimal("0.0002"), prior=0.9),
            Option("dear", Decimal("0.001"), prior=0.96),
        ),
    )
    step = next_step(job, Evidence(right=right, answers=answers, spent_usd=Decimal(0)))
    assert (
        step.kind == "test" and step.model_id == "dear" and set(step.items) == {i for i in range(truth) if i % 10 == 0}
    )
    right["dear"] = {i: True for i in step.items}
    answers["dear"] = {i: "a" for i in step.items}
    done = next_step(job, Evidence(right=right, answers=answers, spent_usd=Decimal(0)))
    assert done.kind == "chosen" and done.route is not None and done.route.kind == "cascade"
    assert done.route.measure.right == truth and done.route.escalated == 30
    assert done.route.measure.confidence < 1 and "pair" in done.route.measure.source


def test_anytime_bounds_hold_however_many_looks() -> None:
    """At a true rate of exactly the bar, a bound read after every 10 items (100 looks) rarely ever clears it."""
    import random

    crossed = 0
    for run in range(200):
        rng, right = random.Random(run), 0
        for n in range(1, 1001):
            right += rng.random() < 0.9
            if n % 10 == 0 and anytime_lower_bound(n, right) > 0.9:
                crossed += 1
                break
    assert crossed / 200 <= 0.05
    assert anytime_lower_bound(200, 188) < 0.94 < anytime_upper_bound(200, 188)


@pytest.mark.parametrize(
    ("n", "agree", "drifted"), [(MIN_CHECKS - 1, 0, False), (40, 38, False), (40, 20, True), (200, 170, True)]
)
def test_drift(n: int, agree: int, drifted: bool) -> None:
    assert judge_drift(n=n, agree=agree, bar=0.9).drifted is drifted


def test_the_exact_bound_is_clopper_pearson() -> None:
    """P(at least `right` of n | the bound) is the error allowed, summed from the binomial itself."""
    from math import comb

    for n, right in ((200, 190), (50, 45), (10, 3), (1000, 940)):
        p = exact_lower_bound(n, right, 0.955)
        tail = sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(right, n + 1))
        assert abs(tail - 0.045) < 1e-9
    assert exact_lower_bound(30, 30, 0.95) == pytest.approx(0.05 ** (1 / 30))
    assert exact_lower_bound(10, 0) == 0.0


def test_the_proving_bound_holds_over_every_look_and_the_last() -> None:
    """At a true rate of exactly the bar, read after every 10 labels and at the last look on all 200,
    it clears the bar in at most 5% of jobs (the early looks' 0.5% plus the last look's 4.5%)."""
    import random

    runs, crossed = 2000, 0
    for run in range(runs):
        rng, right = random.Random(run), 0
        for n in range(1, 201):
            right += rng.random() < 0.909
            if n % 10 == 0 and proving_bound(n, right, 200, bar=0.909) >= 0.909:
                crossed += 1
                break
    assert 0.02 <= crossed / runs <= 0.05


def test_the_last_look_proves_what_the_anytime_bound_alone_cannot() -> None:
    """The issue's case: 189 of 200 labels proves 0.909 at the look on all 200 labels, not before."""
    assert proving_bound(200, 189, 200, bar=0.909) >= 0.909
    assert proving_bound(200, 189, 400, bar=0.909) < 0.909  # 200 of 400 labels: an early look
    assert anytime_lower_bound(200, 189, 0.95, bar=0.909) < 0.909
    assert proving_bound(200, 188, 200, bar=0.909) < 0.909


def test_the_last_look_goes_to_one_pair_picked_by_its_cost() -> None:
    """Three cheap models make three pairs; at the last look only the cheapest pair to run (the one
    whose models agree most: answers, not labels) gets the last look's share."""
    n = 200
    models = ("c1", "c2", "c3")
    # c1 and c2 agree on all but 10 items; c3 disagrees with both on 20 more.
    answers = {
        "c1": {i: "a" if i >= 10 else "x" for i in range(n)},
        "c2": {i: "a" if i >= 10 else "y" for i in range(n)},
        "c3": {i: "a" if i >= 30 else "z" for i in range(n)},
    }
    right = {m: {i: a[i] == "a" for i in range(n)} for m, a in answers.items()}
    right["dear"] = dict.fromkeys(range(30), True)
    answers["dear"] = dict.fromkeys(range(30), "a")
    job = replace(
        _job(labels=n, bar=0.97),  # no cheap model alone is proven: the strong one is the best prior
        options=(
            *(Option(m, Decimal("0.0001"), prior=0.85) for m in models),
            Option("dear", Decimal("0.001"), prior=0.99),
        ),
    )
    routes = {r.name: r for r in next_step(job, Evidence(right=right, answers=answers, spent_usd=Decimal(0))).options}
    last = [r for r in routes.values() if r.kind == "cascade" and "last look" in r.measure.source]
    assert [r.name for r in last] == ["cascade c1 + c2 -> dear"]
    others = [r for r in routes.values() if r.kind == "cascade" and r not in last]
    assert len(others) == 2 and all("1 of 3 pairs" in r.measure.source for r in others)
    # Every cascade is right on all 200; only the early looks' share (shared by 3) bounds the others.
    assert all(r.measure.right == n for r in routes.values() if r.kind == "cascade")
    assert all(r.measure.lower < last[0].measure.lower for r in others)
